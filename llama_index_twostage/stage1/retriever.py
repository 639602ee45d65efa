"""Stage 1: ``ChromaRecallRetriever``, the bi-encoder over Chroma that hands ``recall_k`` candidates on.

Recall is decided here. Whatever this stage misses, no reranker brings back, so each node records its stage-1
rank and cosine similarity for the later stages and for evaluation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from llama_index_twostage.closing import ClosesOwner
from llama_index_twostage.errors import CollectionNotFoundError, ConfigurationError
from llama_index_twostage.events import RecallSideEvent, Stage1Event
from llama_index_twostage.models import (
    embedding_contract,
    embedding_dimension,
    query_tokenizer_of,
    sentence_transformer_of,
)
from llama_index_twostage.nodes import node_from_record, query_text
from llama_index_twostage.stage1.filters import to_chroma_where
from llama_index_twostage.store.chroma import ChromaStore
from llama_index_twostage.store.contract import DistanceSpace, distance_space, distance_to_similarity, verify_collection
from llama_index_twostage.timing import Stopwatch

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from llama_index.core.base.embeddings.base import BaseEmbedding

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

_INCLUDE = ["documents", "metadatas", "distances"]
_RECORD_FIELDS = ["documents", "metadatas"]
Record = tuple[str | None, dict[str, Any] | None]
"""A Chroma record's document and metadata."""


@dataclass(frozen=True)
class Recalled:
    """What one side of stage 1 found, best first: Chroma records, that side's scores, and what it noticed about the
    query (``notes``: ``query_truncated``, ``recall_starved``), which every node it yields carries."""

    ids: list[str]
    documents: list[str | None]
    metadatas: list[dict[str, Any] | None]
    scores: list[float]
    notes: dict[str, Any] = field(default_factory=dict)

    def records(self) -> dict[str, Record]:
        """Id -> (document, metadata)."""
        return dict(zip(self.ids, zip(self.documents, self.metadatas)))


def ranked_nodes(recalled: Recalled, elapsed_ms: float) -> list[NodeWithScore]:
    """Nodes in ``recalled``'s order, each with its ``stage1_rank``, ``stage1_score``, ``stage1_ms`` and the notes."""
    nodes = []
    for rank, (node_id, document, metadata, score) in enumerate(
        zip(recalled.ids, recalled.documents, recalled.metadatas, recalled.scores), 1
    ):
        info = {"stage1_rank": rank, "stage1_score": score, "stage1_ms": elapsed_ms, **recalled.notes}
        nodes.append(NodeWithScore(node=node_from_record(node_id, document, metadata, info), score=score))
    return nodes


def recall_starved(similarities: list[float], recall_k: int, gap: float) -> bool:
    """Stage 1 filled all ``recall_k`` slots and the last is nearly as similar as the first.

    A healthy ranking falls off: the best candidates stand out and the tail is clearly less similar. When the
    similarity at rank ``recall_k`` is still within ``gap`` of the top one, the cut fell inside a plateau of
    equally plausible candidates, and relevant documents likely sit just beyond it, out of the reranker's reach.
    """
    return len(similarities) >= recall_k > 0 and similarities[0] - similarities[recall_k - 1] <= gap


class ChromaRecallRetriever(ClosesOwner, BaseRetriever):
    """Stage 1: embed the query, fetch the ``recall_k`` nearest nodes from Chroma, score them by cosine similarity.

    Each node's ``metadata["twostage"]`` holds ``stage1_rank`` (1-based), ``stage1_score`` and ``stage1_ms``.

    Args:
        store: the Chroma store to search (its owner closes it).
        embed_model: any LlamaIndex embedding (a hosted API too); it must be the model that wrote the collection.
        recall_k: candidates returned.
        filters: LlamaIndex metadata filters applied inside Chroma.
        recall_guard_gap: when set, warn if the cosine at rank ``recall_k`` is within this of the top one (see
            :func:`recall_starved`); None turns the guard off.
        query_tokenizer: counts a query's tokens for the truncation warning, apart from the model's own tokenizer
            (:func:`~llama_index_twostage.models.query_tokenizer_of`, which is the default: a copy costs about 30
            ms, so a factory that builds retrievers per request passes the one it keeps).
    """

    def __init__(
        self,
        store: ChromaStore,
        embed_model: BaseEmbedding,
        *,
        recall_k: int = 100,
        filters: MetadataFilters | None = None,
        recall_guard_gap: float | None = None,
        query_tokenizer: Any = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if recall_k <= 0:
            raise ConfigurationError(f"recall_k must be positive, got {recall_k}")
        if recall_guard_gap is not None and not recall_guard_gap > 0:
            raise ConfigurationError(f"recall_guard_gap must be positive, got {recall_guard_gap}")
        super().__init__(callback_manager=callback_manager)
        self.store = store
        self.embed_model = embed_model
        self.recall_k = recall_k
        self.filters = filters
        self.recall_guard_gap = recall_guard_gap
        self._where = to_chroma_where(filters)
        self._collection: Collection | None = None
        self._space: DistanceSpace = "cosine"
        self.query_tokenizer = query_tokenizer if query_tokenizer is not None else query_tokenizer_of(embed_model)

    def _collection_for(self, dimension: int) -> Collection:
        """Open and verify the collection once, on the first query (it may not exist when the retriever is built)."""
        if self._collection is None:
            collection = self.store.open_collection()
            expected = embedding_contract(self.embed_model)
            verify_collection(collection, expected.embed_model, dimension, expected.embed_backend, expected.tolerance)
            self._space = distance_space(collection)
            self._collection = collection
        return self._collection

    def collection(self) -> Collection:
        """The verified collection (opened on first use; a retried read)."""
        if self._collection is not None:
            return self._collection
        dimension = embedding_dimension(self.embed_model)
        return self.store.with_retries(lambda: self._collection_for(dimension))

    def _warn_if_truncated(self, text: str) -> bool:
        if self.query_tokenizer is None:
            return False
        window = self.embed_model.max_length  # type: ignore[attr-defined]  # HuggingFaceEmbedding's, public
        tokens = len(self.query_tokenizer(text, verbose=False)["input_ids"])
        if tokens <= window:
            return False
        logger.warning(
            "query is %d tokens; the embedding model reads only the first %d: shorten it for full recall",
            tokens,
            window,
        )
        return True

    def _query_embedding(self, query_bundle: QueryBundle, text: str) -> list[float]:
        if query_bundle.embedding is not None:
            return list(query_bundle.embedding)
        return self.embed_model.get_query_embedding(text)

    def _explain_short(self, returned: int, count: int) -> None:
        """Fewer than ``recall_k`` came back: an empty collection is an error; a small one, or an approximate index
        that found fewer than the collection holds (candidates lost before any reranker), is said in a warning.

        Only then is the collection counted, so a normal query costs Chroma one request, not two.
        """
        if count == 0:
            raise CollectionNotFoundError(
                f"collection {self.store.collection_name!r} is empty: ingest documents first (`twostage ingest PATH`)"
            )
        if self._where is not None:
            return
        if count > returned:
            logger.warning(
                "recall_k=%d but Chroma's approximate index returned only %d of the %d nodes in collection %r: raise "
                "hnsw_ef_search (or rebuild the collection with a wider hnsw_ef_construction)",
                self.recall_k,
                returned,
                count,
                self.store.collection_name,
            )
            return
        logger.warning(
            "recall_k=%d but collection %r holds only %d nodes: returning all of them",
            self.recall_k,
            self.store.collection_name,
            returned,
        )

    def _query(self, collection: Collection, embedding: list[float]) -> Any:
        """``collection.query`` for the ``recall_k`` nearest."""
        return collection.query(
            query_embeddings=[embedding], n_results=self.recall_k, where=self._where, include=_INCLUDE
        )

    def _search(self, embedding: list[float]) -> dict[str, Any]:
        """The nearest ``recall_k`` records; a read, so transport failures are retried (see ``chroma_retries``)."""

        def search() -> dict[str, Any]:
            collection = self._collection_for(len(embedding))
            result = self._query(collection, embedding)
            if len(result["ids"][0]) < self.recall_k:
                self._explain_short(len(result["ids"][0]), collection.count())
            return result

        return self.store.with_retries(search)

    def _guard_recall(self, similarities: list[float]) -> bool:
        """The opt-in runtime guard: warn when this query's candidate list looks cut inside a plateau."""
        gap = self.recall_guard_gap
        if gap is None or not recall_starved(similarities, self.recall_k, gap):
            return False
        logger.warning(
            "query looks recall-starved: the cosine at rank %d (%.3f) is within %.3f of the top (%.3f); relevant "
            "documents may lie beyond recall_k: raise recall_k or check with `twostage eval --sweep`",
            self.recall_k,
            similarities[self.recall_k - 1],
            gap,
            similarities[0],
        )
        return True

    def _recalled(self, result: dict[str, Any], query_truncated: bool) -> Recalled:
        notes: dict[str, Any] = {}
        ids, documents, metadatas, distances = (
            result[key][0] for key in ("ids", "documents", "metadatas", "distances")
        )
        with_text = [position for position, document in enumerate(documents) if document]
        if len(with_text) < len(ids):  # written by another tool without text: nothing to rank or read
            notes["dropped_without_text"] = len(ids) - len(with_text)
            logger.warning(
                "%d of the %d nearest records in collection %r have no text (written by another tool) and were "
                "dropped: they take candidate slots from records with text; store them with their text or delete them",
                len(ids) - len(with_text),
                len(ids),
                self.store.collection_name,
            )
            ids, documents, metadatas, distances = (
                [column[position] for position in with_text] for column in (ids, documents, metadatas, distances)
            )
        similarities = [distance_to_similarity(float(distance), self._space) for distance in distances]
        if query_truncated:
            notes["query_truncated"] = True
        if self._guard_recall(similarities):
            notes["recall_starved"] = True
        return Recalled(ids, documents, metadatas, similarities, notes)

    @dispatcher.span
    def recall(self, query_bundle: QueryBundle) -> Recalled:
        """The ``recall_k`` nearest records by cosine similarity, best first (a span of its own)."""
        with Stopwatch() as watch:
            text = query_text(query_bundle)
            truncated = self._warn_if_truncated(text)
            recalled = self._recalled(self._search(self._query_embedding(query_bundle, text)), truncated)
        dispatcher.event(RecallSideEvent(side="dense", candidates=len(recalled.ids), ms=watch.ms))
        return recalled

    @dispatcher.span
    async def arecall(self, query_bundle: QueryBundle) -> Recalled:
        """:meth:`recall` off the event loop (local models block; hosted APIs are awaited)."""
        with Stopwatch() as watch:
            text = query_text(query_bundle)
            if sentence_transformer_of(self.embed_model) is None and query_bundle.embedding is None:
                embedding = await self.embed_model.aget_query_embedding(text)
                truncated = False
            else:
                truncated = await asyncio.to_thread(self._warn_if_truncated, text)
                embedding = await asyncio.to_thread(self._query_embedding, query_bundle, text)
            recalled = self._recalled(await self._asearch(embedding), truncated)
        dispatcher.event(RecallSideEvent(side="dense", candidates=len(recalled.ids), ms=watch.ms))
        return recalled

    def _ranked(self, recalled: Recalled, elapsed_ms: float) -> list[NodeWithScore]:
        dispatcher.event(
            Stage1Event(mode="dense", candidates=len(recalled.ids), recall_k=self.recall_k, stage1_ms=elapsed_ms)
        )
        return ranked_nodes(recalled, elapsed_ms)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        with Stopwatch() as watch:
            recalled = self.recall(query_bundle)
        return self._ranked(recalled, watch.ms)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        with Stopwatch() as watch:
            recalled = await self.arecall(query_bundle)
        return self._ranked(recalled, watch.ms)

    async def _asearch(self, embedding: list[float]) -> dict[str, Any]:
        """:meth:`_search` in a worker thread, in every mode. Not through Chroma's async HTTP client: its clients on
        one event loop share one connection pool, headers included, so a second store's queries would carry the first
        one's token to the second one's server (chroma-core/chroma#6869)."""
        return await asyncio.to_thread(self._search, embedding)

    def fetch(self, ids: Sequence[str]) -> dict[str, Record]:
        """The records of ``ids`` that pass this retriever's filters, by id (another side's candidates, checked
        against Chroma: a deleted or filtered-out record is left out)."""
        if not ids:
            return {}
        result = self.store.with_retries(
            lambda: self.collection().get(ids=list(ids), where=self._where, include=_RECORD_FIELDS)
        )
        records = _by_id(result)
        if len(records) < len(result["ids"]):
            logger.warning(
                "%d of the %d records that the lexical index matched in collection %r have no text in Chroma "
                "(rewritten by another tool) and were dropped: store them with their text or delete them",
                len(result["ids"]) - len(records),
                len(result["ids"]),
                self.store.collection_name,
            )
        return records

    async def afetch(self, ids: Sequence[str]) -> dict[str, Record]:
        """:meth:`fetch` in a worker thread (see :meth:`_asearch`)."""
        return await asyncio.to_thread(self.fetch, ids)


def _by_id(result: Any) -> dict[str, Record]:
    """Chroma's ``get`` result as id -> (document, metadata); a record without text is left out, as if absent."""
    return {
        record_id: (document, metadata)
        for record_id, document, metadata in zip(result["ids"], result["documents"], result["metadatas"])
        if document
    }
