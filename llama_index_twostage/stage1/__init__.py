"""Stage 1, recall: ``ChromaRecallRetriever`` (the bi-encoder over Chroma) and the metadata filters it applies."""

from llama_index_twostage.stage1.filters import to_chroma_where
from llama_index_twostage.stage1.retriever import ChromaRecallRetriever, recall_starved

__all__ = ["ChromaRecallRetriever", "recall_starved", "to_chroma_where"]
