"""Two-stage retrieval for LlamaIndex: a bi-encoder over Chroma for recall, a cross-encoder for precision.

Data flows one way::

    RetrieverSettings -> ingest_documents -> Chroma -> ChromaRecallRetriever (stage 1, recall_k)
                      -> CrossEncoderRerank (stage 2, top_k) -> RetrieverQueryEngine / TwoStageRetriever
"""

from llama_index_twostage.errors import (
    ChromaUnavailableError,
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigurationError,
    DocumentError,
    EmptyQueryError,
    InvalidQueryError,
    ModelLoadError,
    TwoStageError,
)
from llama_index_twostage.ingest import IngestReport, ingest_documents
from llama_index_twostage.nodes import STAGE_KEY, stage_info
from llama_index_twostage.pipeline import (
    TwoStageRetriever,
    build_query_engine,
    build_reranker,
    build_retriever,
    build_two_stage_retriever,
)
from llama_index_twostage.rerank import CrossEncoderRerank
from llama_index_twostage.retriever import ChromaRecallRetriever
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.verify import VerifyReport, verify_collection_integrity

__all__ = [
    "STAGE_KEY",
    "ChromaRecallRetriever",
    "ChromaUnavailableError",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "ConfigurationError",
    "DocumentError",
    "CrossEncoderRerank",
    "EmptyQueryError",
    "IngestReport",
    "InvalidQueryError",
    "ModelLoadError",
    "RetrieverSettings",
    "TwoStageError",
    "TwoStageRetriever",
    "VerifyReport",
    "build_query_engine",
    "build_reranker",
    "build_retriever",
    "build_two_stage_retriever",
    "ingest_documents",
    "stage_info",
    "verify_collection_integrity",
]
