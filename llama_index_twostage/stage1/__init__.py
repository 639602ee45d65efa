"""Stage 1, recall: the bi-encoder over Chroma (``ChromaRecallRetriever``), BM25 beside it and their fusion
(``HybridRecallRetriever``), and the metadata filters both apply."""

from llama_index_twostage.stage1.filters import to_chroma_where
from llama_index_twostage.stage1.fusion import FusionConfig, Stage1Mode, reciprocal_rank_fusion
from llama_index_twostage.stage1.hybrid import HybridRecallRetriever, found_by
from llama_index_twostage.stage1.retriever import ChromaRecallRetriever, Recalled, recall_starved

__all__ = [
    "ChromaRecallRetriever",
    "FusionConfig",
    "HybridRecallRetriever",
    "Recalled",
    "Stage1Mode",
    "found_by",
    "recall_starved",
    "reciprocal_rank_fusion",
    "to_chroma_where",
]
