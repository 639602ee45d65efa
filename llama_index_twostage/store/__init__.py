"""Where the documents live: the Chroma store (clients, collection contract, retries, close), its integrity check,
the change feed every writer leaves in Chroma, and the lexical index that follows it on each host (catch-up,
reconcile, atomic reindex)."""

from llama_index_twostage.store.analysis import LEXICAL_LANGUAGES, Analyser
from llama_index_twostage.store.chroma import ChromaConfig, ChromaStore, HnswParameters
from llama_index_twostage.store.contract import (
    CollectionContract,
    distance_space,
    distance_to_similarity,
    model_identity,
    verify_collection,
)
from llama_index_twostage.store.feed import LexicalFollower
from llama_index_twostage.store.generations import LexicalConfig, LexicalFolder
from llama_index_twostage.store.lexical import LexicalHits, LexicalIndex, LexicalRecord, TantivyIndex
from llama_index_twostage.store.reconcile import LexicalDrift, find_drift, rebuild, reconcile, repair
from llama_index_twostage.store.verify import VerifyReport, verify_store

__all__ = [
    "LEXICAL_LANGUAGES",
    "Analyser",
    "ChromaConfig",
    "ChromaStore",
    "CollectionContract",
    "HnswParameters",
    "LexicalConfig",
    "LexicalDrift",
    "LexicalFolder",
    "LexicalFollower",
    "LexicalHits",
    "LexicalIndex",
    "LexicalRecord",
    "TantivyIndex",
    "VerifyReport",
    "distance_space",
    "distance_to_similarity",
    "find_drift",
    "model_identity",
    "rebuild",
    "reconcile",
    "repair",
    "verify_collection",
    "verify_store",
]
