"""Where the documents live: the Chroma store (clients, collection contract, retries, close), its integrity check,
and the lexical index kept in step with it (reconcile, rebuild)."""

from llama_index_twostage.store.analysis import LEXICAL_LANGUAGES, Analyser
from llama_index_twostage.store.chroma import ChromaStore, HnswParameters
from llama_index_twostage.store.contract import (
    CollectionContract,
    distance_space,
    distance_to_similarity,
    model_identity,
    verify_collection,
)
from llama_index_twostage.store.lexical import LexicalHits, LexicalIndex, LexicalRecord, TantivyIndex
from llama_index_twostage.store.reconcile import LexicalDrift, ensure_in_step, find_drift, rebuild, reconcile, repair
from llama_index_twostage.store.verify import VerifyReport, verify_store

__all__ = [
    "LEXICAL_LANGUAGES",
    "Analyser",
    "ChromaStore",
    "CollectionContract",
    "HnswParameters",
    "LexicalDrift",
    "LexicalHits",
    "LexicalIndex",
    "LexicalRecord",
    "TantivyIndex",
    "VerifyReport",
    "distance_space",
    "distance_to_similarity",
    "ensure_in_step",
    "find_drift",
    "model_identity",
    "rebuild",
    "reconcile",
    "repair",
    "verify_collection",
    "verify_store",
]
