"""Two-stage retrieval for LlamaIndex: a bi-encoder over Chroma for recall, a cross-encoder for precision.

Data flows one way::

    documents -> ingest -> ChromaStore + LexicalFolder (BM25 on each host, following Chroma's change feed)
              -> HybridRecallRetriever / ChromaRecallRetriever (stage 1, recall_k)
              -> CrossEncoderRerank (stage 2, top_k) -> RetrieverQueryEngine / TwoStageRetriever

``TwoStagePipeline`` builds and owns that graph from one ``RetrieverSettings``.
"""

from llama_index_twostage.errors import (
    ChromaAuthenticationError,
    ChromaServerError,
    ChromaUnavailableError,
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigurationError,
    DocumentError,
    EmbeddedStoreInUseError,
    EmptyQueryError,
    InvalidQueryError,
    LexicalIndexBusy,
    LexicalIndexError,
    ModelLoadError,
    ModelOutputError,
    RerankAuthenticationError,
    RerankServerError,
    TwoStageError,
)
from llama_index_twostage.ingest import Chunking, DeleteReport, IngestReport, ingest_into
from llama_index_twostage.models import ModelPool
from llama_index_twostage.nodes import STAGE_KEY, StagedNode, stage_info
from llama_index_twostage.pipeline import (
    TwoStagePipeline,
    TwoStageQueryEngine,
    TwoStageRetriever,
    build_query_engine,
    build_reranker,
    build_retriever,
    build_two_stage_retriever,
    ingest_documents,
    verify_collection_integrity,
)
from llama_index_twostage.retry import RetryPolicy
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.stage1 import ChromaRecallRetriever, FusionConfig, HybridRecallRetriever
from llama_index_twostage.stage2 import (
    CascadeConfig,
    CrossEncoderRerank,
    CrossEncoderScorer,
    HttpRerankScorer,
    PairScorer,
    PairTemplate,
    RerankServerConfig,
    ScoreCache,
)
from llama_index_twostage.store import (
    ChromaConfig,
    ChromaStore,
    LexicalConfig,
    LexicalFolder,
    LexicalIndex,
    TantivyIndex,
    VerifyReport,
)

__all__ = [
    "STAGE_KEY",
    "StagedNode",
    "ChromaAuthenticationError",
    "ChromaServerError",
    "CascadeConfig",
    "ChromaConfig",
    "ChromaRecallRetriever",
    "ChromaStore",
    "Chunking",
    "CrossEncoderScorer",
    "HttpRerankScorer",
    "FusionConfig",
    "HybridRecallRetriever",
    "LexicalConfig",
    "LexicalIndex",
    "LexicalFolder",
    "LexicalIndexBusy",
    "LexicalIndexError",
    "ModelPool",
    "PairScorer",
    "PairTemplate",
    "ScoreCache",
    "TwoStagePipeline",
    "ChromaUnavailableError",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "ConfigurationError",
    "DeleteReport",
    "DocumentError",
    "EmbeddedStoreInUseError",
    "CrossEncoderRerank",
    "EmptyQueryError",
    "IngestReport",
    "InvalidQueryError",
    "ModelLoadError",
    "ModelOutputError",
    "RerankAuthenticationError",
    "RerankServerConfig",
    "RerankServerError",
    "RetryPolicy",
    "RetrieverSettings",
    "TantivyIndex",
    "TwoStageError",
    "TwoStageQueryEngine",
    "TwoStageRetriever",
    "VerifyReport",
    "build_query_engine",
    "build_reranker",
    "build_retriever",
    "build_two_stage_retriever",
    "ingest_documents",
    "ingest_into",
    "stage_info",
    "verify_collection_integrity",
]
