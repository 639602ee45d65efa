"""Where the documents live: the Chroma store (clients, collection contract, retries, close) and its integrity check."""

from llama_index_twostage.store.chroma import ChromaStore, HnswParameters
from llama_index_twostage.store.contract import (
    CollectionContract,
    distance_space,
    distance_to_similarity,
    model_identity,
    verify_collection,
)
from llama_index_twostage.store.verify import VerifyReport, verify_store

__all__ = [
    "ChromaStore",
    "CollectionContract",
    "HnswParameters",
    "VerifyReport",
    "distance_space",
    "distance_to_similarity",
    "model_identity",
    "verify_collection",
    "verify_store",
]
