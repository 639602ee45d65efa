"""Stage 1: ``ChromaRecallRetriever``, the bi-encoder over Chroma that hands ``recall_k`` candidates on.

Recall is decided here. Whatever this stage misses, no reranker brings back, so each node records its stage-1
rank and cosine similarity for the later stages and for evaluation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import MetadataFilters
from llama_index.core.vector_stores.utils import metadata_dict_to_node
from pydantic_core import from_json

from llama_index_twostage.errors import CollectionNotFoundError, ConfigurationError
from llama_index_twostage.models import embedding_model_name, sentence_transformer_of
from llama_index_twostage.nodes import query_text, stage_fields, with_stage_info
from llama_index_twostage.settings import DistanceSpace
from llama_index_twostage.stage1.filters import to_chroma_where
from llama_index_twostage.store.chroma import ChromaStore
from llama_index_twostage.store.contract import distance_space, distance_to_similarity, verify_collection
from llama_index_twostage.timing import Stopwatch

if TYPE_CHECKING:
    from chromadb.api.models.AsyncCollection import AsyncCollection
    from chromadb.api.models.Collection import Collection
    from llama_index.core.base.embeddings.base import BaseEmbedding

logger = logging.getLogger(__name__)

_INCLUDE = ["documents", "metadatas", "distances"]


def recall_starved(similarities: list[float], recall_k: int, gap: float) -> bool:
    """Stage 1 filled all ``recall_k`` slots and the last is nearly as similar as the first.

    A healthy ranking falls off: the best candidates stand out and the tail is clearly less similar. When the
    similarity at rank ``recall_k`` is still within ``gap`` of the top one, the cut fell inside a plateau of
    equally plausible candidates, and relevant documents likely sit just beyond it, out of the reranker's reach.
    """
    return len(similarities) >= recall_k > 0 and similarities[0] - similarities[recall_k - 1] <= gap


def _node_from_record(
    node_id: str, document: str | None, metadata: dict[str, Any] | None, info: dict[str, Any] | None = None
) -> BaseNode:
    """Rebuild a node from a Chroma record in LlamaIndex's layout (or wrap a plain record written by other code),
    with ``info`` already in its stage metadata.

    Text nodes, a hundred per query, are parsed by pydantic's JSON parser and built, stage metadata included, in one
    validated construction; other node types go through LlamaIndex's own ``metadata_dict_to_node``.
    """
    metadata = metadata or {}
    if metadata.get("_node_type", TextNode.class_name()) != TextNode.class_name():
        node = metadata_dict_to_node(metadata, text=document).model_copy(update={"id_": node_id})
        return with_stage_info(node, **info) if info else node
    if "_node_content" in metadata:
        fields = from_json(metadata["_node_content"])
        fields.pop("class_name", None)
        if document is not None:
            fields["text"] = document
    else:
        fields = {"text": document or "", "metadata": metadata}
    fields["id_"] = node_id
    if info:
        fields.update(stage_fields(fields, info))
    return TextNode(**fields)


class ChromaRecallRetriever(BaseRetriever):
    """Stage 1: embed the query, fetch the ``recall_k`` nearest nodes from Chroma, score them by cosine similarity.

    Each node's ``metadata["twostage"]`` holds ``stage1_rank`` (1-based), ``stage1_score`` and ``stage1_ms``.

    Args:
        store: the Chroma store to search (its owner closes it).
        embed_model: any LlamaIndex embedding (a hosted API too); it must be the model that wrote the collection.
        recall_k: candidates returned.
        filters: LlamaIndex metadata filters applied inside Chroma.
        recall_guard_gap: when set, warn if the cosine at rank ``recall_k`` is within this of the top one (see
            :func:`recall_starved`); None turns the guard off.
    """

    def __init__(
        self,
        store: ChromaStore,
        embed_model: BaseEmbedding,
        *,
        recall_k: int = 100,
        filters: MetadataFilters | None = None,
        recall_guard_gap: float | None = None,
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
        self._async_collection: AsyncCollection | None = None
        self._space: DistanceSpace = "cosine"

    def _collection_for(self, dimension: int) -> Collection:
        """Open and verify the collection once, on the first query (it may not exist when the retriever is built)."""
        if self._collection is None:
            collection = self.store.open_collection()
            verify_collection(collection, embedding_model_name(self.embed_model), dimension)
            self._space = distance_space(collection)
            self._collection = collection
        return self._collection

    def _warn_if_truncated(self, text: str) -> bool:
        model = sentence_transformer_of(self.embed_model)
        if model is None:
            return False
        tokens = len(model.tokenizer(text, verbose=False)["input_ids"])
        if tokens <= model.max_seq_length:
            return False
        logger.warning(
            "query is %d tokens; the embedding model reads only the first %d: shorten it for full recall",
            tokens,
            model.max_seq_length,
        )
        return True

    def _query_embedding(self, query_bundle: QueryBundle, text: str) -> list[float]:
        if query_bundle.embedding is not None:
            return list(query_bundle.embedding)
        return self.embed_model.get_query_embedding(text)

    def _explain_short(self, returned: int, count: int) -> None:
        """Fewer than ``recall_k`` came back: an empty collection is an error, a small one is said in a warning.

        Only then is the collection counted, so a normal query costs Chroma one request, not two.
        """
        if count == 0:
            raise CollectionNotFoundError(
                f"collection {self.store.collection_name!r} is empty: ingest documents first (`twostage ingest PATH`)"
            )
        if self._where is None:
            logger.warning(
                "recall_k=%d but collection %r holds only %d nodes: returning all of them",
                self.recall_k,
                self.store.collection_name,
                returned,
            )

    def _query(self, collection: Any, embedding: list[float]) -> Any:
        """``collection.query`` for the ``recall_k`` nearest (a sync call, or a coroutine on the async client)."""
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

    def _to_nodes(self, result: dict[str, Any], elapsed_ms: float, query_truncated: bool) -> list[NodeWithScore]:
        ids, documents = result["ids"][0], result["documents"][0]
        metadatas, distances = result["metadatas"][0], result["distances"][0]
        similarities = [distance_to_similarity(float(distance), self._space) for distance in distances]
        starved = self._guard_recall(similarities)
        nodes = []
        for rank, (node_id, document, metadata, similarity) in enumerate(
            zip(ids, documents, metadatas, similarities), 1
        ):
            info: dict[str, Any] = {"stage1_rank": rank, "stage1_score": similarity, "stage1_ms": elapsed_ms}
            if query_truncated:
                info["query_truncated"] = True
            if starved:
                info["recall_starved"] = True
            node = _node_from_record(node_id, document, metadata, info)
            nodes.append(NodeWithScore(node=node, score=similarity))
        return nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        text = query_text(query_bundle)
        with Stopwatch() as watch:
            truncated = self._warn_if_truncated(text)
            result = self._search(self._query_embedding(query_bundle, text))
        return self._to_nodes(result, watch.ms, truncated)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Embedding and search run off the event loop (local models block; hosted APIs are awaited)."""
        text = query_text(query_bundle)
        with Stopwatch() as watch:
            if sentence_transformer_of(self.embed_model) is None and query_bundle.embedding is None:
                embedding = await self.embed_model.aget_query_embedding(text)
                truncated = False
            else:
                truncated = await asyncio.to_thread(self._warn_if_truncated, text)
                embedding = await asyncio.to_thread(self._query_embedding, query_bundle, text)
            result = await self._asearch(embedding)
        return self._to_nodes(result, watch.ms, truncated)

    async def _asearch(self, embedding: list[float]) -> dict[str, Any]:
        """Server mode uses Chroma's async client; the in-process modes run the same search in a worker thread."""
        store = self.store
        if store.mode != "server":
            return await asyncio.to_thread(self._search, embedding)
        if self._collection is None:  # open and verify the contract once, through the synchronous path
            await asyncio.to_thread(store.with_retries, lambda: self._collection_for(len(embedding)))

        async def search() -> dict[str, Any]:
            if self._async_collection is None:
                self._async_collection = await store.open_async_collection()
            collection = self._async_collection
            result = await store.bounded(self._query(collection, embedding))
            if len(result["ids"][0]) < self.recall_k:
                self._explain_short(len(result["ids"][0]), await store.bounded(collection.count()))
            return result

        return await store.awith_retries(search)
