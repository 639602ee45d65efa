"""The contract a collection keeps with the embedding model that wrote it, and Chroma's distances as similarities.

A collection records, on creation, which embedding model wrote it, the runtime that computed its vectors (fp32,
half precision, ONNX, int8: ``embed_backend``), the vectors' dimension and the distance space. Opening it with
another model or dimension fails loudly instead of returning nonsense neighbours; with another runtime it is
accepted only when that runtime's measured search on the recorded one's vectors is within tolerance of fp32's
(:mod:`llama_index_twostage.embed_backends`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llama_index_twostage.errors import CollectionMismatchError

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

DistanceSpace = Literal["cosine", "l2", "ip"]
logger = logging.getLogger(__name__)

MODEL_KEY = "twostage:embed_model"
DIMENSION_KEY = "twostage:dimension"
BACKEND_KEY = "twostage:embed_backend"
UNRECORDED_BACKEND = "torch"  # collections written before the runtime was recorded: the bi-encoder ran fp32

Tolerance = Callable[[str], tuple[bool, str]]
"""Given the runtime that wrote a collection: whether the caller's runtime may search and extend it, and the
measurement that says so."""

# What each record written by ingestion carries besides LlamaIndex's own layout (read back by ingestion and verify).
SOURCE_KEY = "ref_doc_id"  # where LlamaIndex's node_to_metadata_dict records the source document id
HASH_KEY = "twostage_doc_hash"
CHUNKS_KEY = "twostage_doc_chunks"
STAMP_KEY = "twostage_ingested_at"  # when the record was last written: the change feed's clock
TEXT_HASH_KEY = "twostage_text_hash"  # hash of the text the bi-encoder read: its stored embedding can be reused
ORIGIN_KEY = "twostage_source"  # where the document came from (a folder's location, or the name a user gave it)


def model_identity(model: str) -> str:
    """What the contract compares: the model's name without its org or directory.

    A local copy of a hub model (``./models/all-MiniLM-L6-v2``) then matches its hub id
    (``sentence-transformers/all-MiniLM-L6-v2``); the dimension check guards the rest.
    """
    return model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class CollectionContract:
    """Which embedding model wrote a collection, on which runtime, the vectors' dimension and the distance space.

    ``embed_backend`` None is a runtime the library does not know (a hosted embedding): not recorded, not checked.
    ``tolerance`` is the writer's or reader's own judge of another runtime's vectors: used, never recorded.
    """

    embed_model: str
    dimension: int
    space: DistanceSpace = "cosine"
    embed_backend: str | None = None
    tolerance: Tolerance | None = field(default=None, compare=False, repr=False)

    def to_metadata(self) -> dict[str, Any]:
        backend = {BACKEND_KEY: self.embed_backend} if self.embed_backend else {}
        return {MODEL_KEY: self.embed_model, DIMENSION_KEY: self.dimension, **backend}

    @classmethod
    def of(cls, collection: Collection) -> CollectionContract | None:
        """The contract a collection recorded, or None when another tool (e.g. ChromaVectorStore) created it."""
        metadata = collection.metadata or {}
        if MODEL_KEY not in metadata:
            return None
        backend = str(metadata.get(BACKEND_KEY, UNRECORDED_BACKEND))
        return cls(str(metadata[MODEL_KEY]), int(metadata[DIMENSION_KEY]), distance_space(collection), backend)

    def check(
        self,
        expected_model: str,
        expected_dimension: int,
        collection_name: str,
        backend: str | None = None,
        tolerance: Tolerance | None = None,
    ) -> None:
        """Raise :class:`CollectionMismatchError` naming both sides when the query side differs from the writer:
        another model or dimension, or another runtime (``backend``) that ``tolerance`` does not accept."""
        if model_identity(self.embed_model) != model_identity(expected_model):
            raise CollectionMismatchError(
                f"collection {collection_name!r} was written with embedding model {self.embed_model!r}, "
                f"but the settings use {expected_model!r}: set embed_model to {self.embed_model!r} or ingest "
                "into a new collection"
            )
        if self.dimension != expected_dimension:
            raise CollectionMismatchError(
                f"collection {collection_name!r} holds {self.dimension}-dimensional vectors, but "
                f"{expected_model!r} produces {expected_dimension}: use the model that wrote it or a new collection"
            )
        if backend is not None and self.embed_backend is not None and backend != self.embed_backend:
            self._check_backend(backend, tolerance, collection_name)

    def _check_backend(self, backend: str, tolerance: Tolerance | None, collection_name: str) -> None:
        accepted, measured = tolerance(self.embed_backend) if tolerance else (False, "not measured")  # type: ignore[arg-type]
        if not accepted:
            raise CollectionMismatchError(
                f"collection {collection_name!r} was written with embed_backend {self.embed_backend!r}, but this "
                f"process embeds with {backend!r}, and that pair does not search like fp32 ({measured}): set "
                f"embed_backend to {self.embed_backend!r}, or ingest into a new collection"
            )
        logger.info(
            "collection %r written with embed_backend %r, read with %r: within tolerance (%s)",
            collection_name,
            self.embed_backend,
            backend,
            measured,
        )


def verify_collection(
    collection: Collection,
    embed_model: str,
    dimension: int,
    backend: str | None = None,
    tolerance: Tolerance | None = None,
) -> None:
    """Check a collection against the model (and runtime, judged by ``tolerance``) about to read or write it.

    Collections created by other tools (LlamaIndex's ``ChromaVectorStore``) record no model: their dimension is
    checked on a stored vector, and the model cannot be.
    """
    recorded = CollectionContract.of(collection)
    if recorded is not None:
        recorded.check(embed_model, dimension, collection.name, backend, tolerance)
        return
    sample = collection.peek(limit=1).get("embeddings")
    if sample is not None and len(sample) and len(sample[0]) != dimension:
        CollectionContract(embed_model, len(sample[0])).check(embed_model, dimension, collection.name)


def distance_space(collection: Collection) -> DistanceSpace:
    """The distance space Chroma uses for this collection (``l2`` when it was created without one)."""
    configuration = collection.configuration or {}
    index = configuration.get("hnsw") or configuration.get("spann") or {}
    space = index.get("space") or (collection.metadata or {}).get("hnsw:space") or "l2"
    return space  # type: ignore[no-any-return]


def distance_to_similarity(distance: float, space: DistanceSpace) -> float:
    """The one place that turns a Chroma distance into a cosine similarity.

    Chroma returns ``1 - cos`` for ``cosine``, ``1 - dot`` for ``ip`` and the *squared* Euclidean distance for
    ``l2``. For unit vectors (what the bi-encoders here produce) all three give the cosine exactly:
    ``||a - b||^2 = 2 - 2 cos``.
    """
    if space == "l2":
        return 1.0 - distance / 2.0
    return 1.0 - distance
