"""The factory: reads ``RetrieverSettings``, builds each heavy object once from the section its component owns, and
hands it to the components that use it.

Object graph of one :class:`TwoStagePipeline`::

    TwoStagePipeline (owner: close() releases what it created)
      ├── store: ChromaStore(collection, settings.chroma) ── the client, contract, retries, timeouts
      ├── lexical: settings.lexical.open_index(...) ──────── BM25 of the same records on this host (LexicalFolder)
      ├── follower: LexicalFollower ──────── keeps it in step through Chroma's change feed (every lexical.refresh_s)
      ├── models: ModelPool ──────────────── each bi-encoder / cross-encoder (or rerank server client) once
      ├── score_cache: ScoreCache ─────────── shared by every reranker it builds
      ├── retriever()   -> ChromaRecallRetriever(store, embed_model, recall_k, filters)      stage 1 (dense)
      │                    or HybridRecallRetriever(that, lexical, mode, settings.fusion)          (hybrid/lexical)
      ├── reranker()    -> CrossEncoderRerank(scorer(), cascade scorer, score_cache,         stage 2
      │                                      settings.pair_template, long-document mode)
      ├── two_stage_retriever() / query_engine(llm)                                          both stages
      ├── describe()    -> what `twostage info` prints (reads the store, loads no model)
      └── ingest(documents), delete(ref_doc_ids) (write both indexes and the feed), verify(repair), reindex()

Stage 1 and stage 2 know nothing of each other; only this module wires them. The module-level ``build_*`` and
``ingest_documents`` functions are the two-line conveniences: each builds a pipeline for the call, and what a
``build_*`` function returns keeps that pipeline and closes it with its own ``close()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import BaseNode, Document, NodeWithScore, QueryBundle, TransformComponent

from llama_index_twostage.closing import ClosesOwner, Closing
from llama_index_twostage.embed_backends import pooled_embedding
from llama_index_twostage.ingest import Chunking, DeleteReport, IngestReport, delete_documents, ingest_into
from llama_index_twostage.ingest.transform import GivenNodes, Splitting, Transformations, preset
from llama_index_twostage.models import ModelPool, query_tokenizer_of
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.stage1 import ChromaRecallRetriever, HybridRecallRetriever, Stage1Mode
from llama_index_twostage.stage2 import CrossEncoderRerank, CrossEncoderScorer, HttpRerankScorer, PairScorer, ScoreCache
from llama_index_twostage.stage2.backends import BackendSetting
from llama_index_twostage.store import (
    ChromaStore,
    CollectionContract,
    LexicalFollower,
    LexicalIndex,
    VerifyReport,
    distance_space,
    rebuild,
    reconcile,
    verify_store,
)

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import LLM
    from llama_index.core.vector_stores.types import MetadataFilters


class TwoStageRetriever(ClosesOwner, BaseRetriever):
    """Both stages as one LlamaIndex retriever, for retrieval without an LLM.

    Returns the final ``top_k`` nodes; each one's ``metadata["twostage"]`` carries both ranks and scores and the
    per-stage timings (``stage1_ms``, ``stage2_ms``, ``pairs_scored``).
    """

    def __init__(self, recall: BaseRetriever, rerank: CrossEncoderRerank) -> None:
        super().__init__(callback_manager=recall.callback_manager)
        self.recall = recall
        self.rerank = rerank

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.rerank.postprocess_nodes(self.recall.retrieve(query_bundle), query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        candidates = await self.recall.aretrieve(query_bundle)
        return await self.rerank.apostprocess_nodes(candidates, query_bundle)


class TwoStageQueryEngine(ClosesOwner, RetrieverQueryEngine):
    """LlamaIndex's ``RetrieverQueryEngine`` over both stages; from :func:`build_query_engine` it keeps its pipeline,
    released by ``close()`` or a ``with`` block."""


class TwoStagePipeline(Closing):
    """Everything one ``RetrieverSettings`` describes, built once and owned here; a context manager.

    Build one per process (or per configuration) and ask it for retrievers, rerankers and query engines: they share
    its store, models and score cache. ``close()`` releases the Chroma clients and drops the models it loaded.

    Args:
        settings: the configuration.
        embed_model: a LlamaIndex embedding to use instead of loading ``settings.embed_model``.
        models: a pool to share models with other pipelines (it is not closed by this one).
        store: a store to use instead of the settings' (it is not closed by this one).
        lexical: a lexical index to use instead of the settings' (it is not closed by this one).
    """

    def __init__(
        self,
        settings: RetrieverSettings,
        *,
        embed_model: BaseEmbedding | None = None,
        models: ModelPool | None = None,
        store: ChromaStore | None = None,
        lexical: LexicalIndex | None = None,
    ) -> None:
        self.settings = settings
        self._owns_models = models is None
        self._owns_store = store is None
        self._owns_lexical = lexical is None
        self.models = models if models is not None else ModelPool()
        self.store = store if store is not None else ChromaStore(settings.collection, settings.chroma)
        self.lexical: LexicalIndex = (
            lexical if lexical is not None else settings.lexical.open_index(settings.collection, settings.chroma)
        )
        self.follower = LexicalFollower(
            self.store, self.lexical, refresh_s=settings.lexical.refresh_s, page_size=settings.upsert_batch_size
        )
        self.score_cache = ScoreCache(settings.score_cache_size) if settings.score_cache_size else None
        self._embed_model = embed_model

    @property
    def embed_model(self) -> BaseEmbedding:
        """The bi-encoder, loaded on first use."""
        if self._embed_model is None:
            settings = self.settings
            self._embed_model = pooled_embedding(
                self.models,
                settings.embed_model,
                device=settings.device,
                batch_size=settings.embed_batch_size,
                trust_remote_code=settings.trust_remote_code,
                backend=settings.embed_backend,
                cache_dir=settings.model_cache_dir,
            )
        return self._embed_model

    @cached_property
    def query_tokenizer(self) -> Any:
        """The bi-encoder's tokenizer, copied once for every retriever this pipeline builds to count queries with
        (see :func:`~llama_index_twostage.models.query_tokenizer_of`)."""
        return query_tokenizer_of(self.embed_model)

    def retriever(
        self,
        *,
        filters: MetadataFilters | None = None,
        recall_k: int | None = None,
        stage1_mode: Stage1Mode | None = None,
    ) -> ChromaRecallRetriever | HybridRecallRetriever:
        """Stage 1 in the settings' ``stage1_mode`` (or the one given): ``recall_k`` candidates."""
        settings = self.settings
        dense = ChromaRecallRetriever(
            self.store,
            self.embed_model,
            recall_k=recall_k or settings.recall_k,
            filters=filters,
            recall_guard_gap=settings.recall_guard_gap if settings.recall_guard else None,
            query_tokenizer=self.query_tokenizer,
        )
        mode = stage1_mode or settings.stage1_mode
        if mode == "dense":
            return dense
        return HybridRecallRetriever(dense, self.lexical, follower=self.follower, mode=mode, fusion=settings.fusion)

    def scorer(self, backend: BackendSetting, max_length: int | None) -> PairScorer:
        """A scorer of the settings' ``rerank_model`` (on the rerank server for ``http``), loaded once per pool."""
        settings = self.settings
        if backend == "http":
            server, model, normalize = settings.rerank_server, settings.rerank_model, settings.normalize_scores
            return self.models.get(
                ("rerank-server", server, model, normalize),
                lambda: HttpRerankScorer(server, model=model, normalize=normalize),
            )
        return CrossEncoderScorer.load(
            settings.rerank_model,
            backend=backend,
            max_length=max_length,
            device=settings.device,
            normalize=settings.normalize_scores,
            batch_size=settings.rerank_batch_size,
            batch_tokens=settings.rerank_batch_tokens,
            relevant_class=settings.rerank_relevant_class,
            trust_remote_code=settings.trust_remote_code,
            cache_dir=settings.model_cache_dir,
            pool=self.models,
        )

    def reranker(self) -> CrossEncoderRerank:
        """Stage 2, as a LlamaIndex node postprocessor usable in any query engine."""
        settings = self.settings
        scorer = (settings.rerank_backend, settings.max_length)
        cascade = settings.cascade
        return CrossEncoderRerank(
            self.scorer(*scorer),
            top_k=settings.top_k,
            score_threshold=settings.score_threshold,
            cascade_scorer=None if cascade.k is None else self.scorer(*cascade.cheap_scorer(*scorer)),
            cascade_k=cascade.k,
            score_cache=self.score_cache,
            template=settings.pair_template,
            long_documents=settings.rerank_long_documents,
            window_overlap=settings.rerank_window_overlap,
        )

    def two_stage_retriever(self, *, filters: MetadataFilters | None = None) -> TwoStageRetriever:
        """Both stages behind the ``BaseRetriever`` interface."""
        return TwoStageRetriever(self.retriever(filters=filters), self.reranker())

    def query_engine(
        self, llm: LLM | None = None, *, filters: MetadataFilters | None = None, **engine_kwargs: Any
    ) -> TwoStageQueryEngine:
        """A ``RetrieverQueryEngine``: stage 1 as retriever, stage 2 as the last node postprocessor."""
        postprocessors = [*engine_kwargs.pop("node_postprocessors", []), self.reranker()]
        return TwoStageQueryEngine.from_args(
            self.retriever(filters=filters), llm=llm, node_postprocessors=postprocessors, **engine_kwargs
        )

    def ingest(
        self,
        documents: Sequence[Document],
        *,
        transformations: Sequence[TransformComponent] | None = None,
        source: str | None = None,
        sync: bool = False,
    ) -> IngestReport:
        """Chunk, embed and store ``documents`` (see :func:`~llama_index_twostage.ingest.ingest_into`).

        ``transformations``: any LlamaIndex chain (node parsers, metadata extractors; no embedding) instead of the
        settings' ``splitter``; idempotent all the same (see :mod:`~llama_index_twostage.ingest.transform`).
        ``source`` names where the documents come from (``read_files(...).source`` for a folder); ``sync`` deletes
        the documents of that source that are no longer given.
        """
        settings = self.settings
        chunking = Chunking(settings.chunk_size, settings.chunk_overlap)
        if transformations is not None:
            splitting: Chunking | Splitting = Transformations(transformations)
        else:
            splitting = preset(settings.splitter, chunking, self.embed_model) or chunking
        return self._ingest(documents, splitting, source=source, sync=sync)

    def ingest_nodes(self, nodes: Sequence[BaseNode]) -> IngestReport:
        """Embed and store nodes parsed elsewhere, as the chunks of their source documents (``ref_doc_id``): re-keyed
        by source and content, so a re-run adds nothing and a source's chunks that are not given again are
        replaced. The caller's nodes are not modified."""
        given = GivenNodes.of(nodes)
        return self._ingest(given.documents(), given)

    def _ingest(
        self,
        documents: Sequence[Document],
        splitting: Chunking | Splitting,
        *,
        source: str | None = None,
        sync: bool = False,
    ) -> IngestReport:
        settings = self.settings
        return ingest_into(
            self.store,
            self.embed_model,
            documents,
            chunking=splitting,
            upsert_batch_size=settings.upsert_batch_size,
            show_progress=settings.show_progress,
            follower=self.follower,
            source=source,
            sync=sync,
        )

    def delete(self, ref_doc_ids: Sequence[str]) -> DeleteReport:
        """Delete these documents (every chunk of each) from Chroma and the lexical index, and tell every other
        host's index through the change feed; LlamaIndex's ``delete_ref_doc`` for several ids. Unknown ids are
        ignored (the report counts what was deleted)."""
        if isinstance(ref_doc_ids, str):
            ref_doc_ids = [ref_doc_ids]
        return delete_documents(
            self.store, ref_doc_ids, follower=self.follower, batch_size=self.settings.upsert_batch_size
        )

    async def adelete(self, ref_doc_ids: Sequence[str]) -> DeleteReport:
        """:meth:`delete` in a worker thread, so the event loop keeps serving queries."""
        return await asyncio.to_thread(self.delete, ref_doc_ids)

    def verify(self, *, repair_lexical: bool = False) -> VerifyReport:
        """Check every stored record and the lexical index against them (see
        :func:`~llama_index_twostage.store.verify_store`); with ``repair_lexical``, first bring the lexical index
        back in step with Chroma, so the report shows what is left (always so for the in-memory store, whose index
        lives only in this pipeline)."""
        page_size = self.settings.upsert_batch_size
        if repair_lexical or self.store.mode == "memory":  # an in-memory index is this pipeline's own, built on use
            collection = self.store.with_retries(self.store.open_collection)
            progress = self.settings.show_progress
            reconcile(self.store, collection, self.lexical, page_size=page_size, show_progress=progress)
        return verify_store(
            self.store, embed_model=self.settings.embed_model, page_size=page_size, lexical=self.lexical
        )

    def reindex(self) -> int:
        """Rebuild the lexical index from Chroma alone (``twostage reindex``), beside the live one, which it replaces
        atomically; what was written meanwhile comes through the feed. Returns the records indexed."""
        collection = self.store.with_retries(self.store.open_collection)
        indexed = rebuild(
            self.store,
            collection,
            self.lexical,
            page_size=self.settings.upsert_batch_size,
            show_progress=self.settings.show_progress,
        )
        self.follower.follow(collection)
        return indexed

    def describe_stage1(self) -> str:
        """How stage 1 finds candidates."""
        settings = self.settings
        mode, language = settings.stage1_mode, settings.lexical.language
        if mode == "dense":
            return f"dense (recall_k={settings.recall_k})"
        if mode == "lexical":
            return f"lexical: BM25 ({language}) (recall_k={settings.recall_k})"
        return (
            f"hybrid: bi-encoder + BM25 ({language}) by reciprocal rank fusion ({settings.fusion.describe()}), "
            f"recall_k={settings.recall_k}"
        )

    def describe_stage2(self) -> dict[str, str]:
        """The reranker as configured, without loading a model (``auto`` chooses when the reranker first loads)."""
        settings = self.settings
        backend = settings.rerank_backend
        if backend == "http":  # the URL, never the key
            backend += f" ({settings.rerank_server.api} API at {', '.join(settings.rerank_server.urls)})"
        elif backend == "auto":
            backend += " (the fastest that ranks like fp32 here, chosen by calibration when the reranker first loads)"
        return {
            "rerank model": f"{settings.rerank_model} (recall_k={settings.recall_k}, top_k={settings.top_k})",
            "rerank backend": backend,
            "reranker reads": settings.pair_template.describe(),
            "long documents": settings.rerank_long_documents,
        }

    def describe(self) -> dict[str, str]:
        """What ``twostage info`` prints: the collection (where, how many records, which model wrote it, dimension
        and distance space), the lexical index, and how each stage is configured. Reads the store; loads no model."""
        collection = self.store.with_retries(self.store.open_collection)
        contract = CollectionContract.of(collection)
        return {
            "collection": f"{collection.name} in {self.store.describe()}",
            "nodes": str(self.store.with_retries(collection.count)),
            "embedding model": contract.embed_model if contract else "not recorded",
            "embed backend": (contract.embed_backend if contract else None) or "not recorded",
            "dimension": str(contract.dimension) if contract else "not recorded",
            "distance space": distance_space(collection),
            "lexical index": f"{self.lexical.count()} records in {self.lexical.describe()}",
            "stage 1": self.describe_stage1(),
            **self.describe_stage2(),
        }

    def close(self) -> None:
        """Release the store's clients, the lexical index and the loaded models (a rerank server's HTTP clients too),
        where this pipeline created them."""
        if self._owns_store:
            self.store.close()
        if self._owns_lexical:
            self.lexical.close()
        if self._owns_models:
            self.models.close()


Owned = TypeVar("Owned", bound=ClosesOwner)


def _keeping_pipeline(pipeline: TwoStagePipeline, build: Callable[[TwoStagePipeline], Owned]) -> Owned:
    """What ``build`` makes of ``pipeline``, holding it: nothing else does, and its ``close()`` releases it."""
    try:
        return build(pipeline).keep_owner(pipeline)
    except BaseException:
        pipeline.close()
        raise


def build_retriever(
    settings: RetrieverSettings, *, embed_model: BaseEmbedding | None = None, filters: MetadataFilters | None = None
) -> ChromaRecallRetriever | HybridRecallRetriever:
    """Stage 1 alone, in the settings' ``stage1_mode``; it holds its store and models: ``close()`` it, or use it in
    a ``with`` block."""
    pipeline = TwoStagePipeline(settings, embed_model=embed_model)
    return _keeping_pipeline(pipeline, lambda built: built.retriever(filters=filters))


def build_reranker(settings: RetrieverSettings) -> CrossEncoderRerank:
    """Stage 2 alone, as a LlamaIndex node postprocessor; it holds its models (or rerank server clients):
    ``close()`` it, or use it in a ``with`` block."""
    return _keeping_pipeline(TwoStagePipeline(settings), TwoStagePipeline.reranker)


def build_two_stage_retriever(
    settings: RetrieverSettings, *, embed_model: BaseEmbedding | None = None, filters: MetadataFilters | None = None
) -> TwoStageRetriever:
    """Both stages behind the ``BaseRetriever`` interface; ``close()`` it, or use it in a ``with`` block."""
    pipeline = TwoStagePipeline(settings, embed_model=embed_model)
    return _keeping_pipeline(pipeline, lambda built: built.two_stage_retriever(filters=filters))


def build_query_engine(
    settings: RetrieverSettings,
    llm: LLM | None = None,
    *,
    embed_model: BaseEmbedding | None = None,
    filters: MetadataFilters | None = None,
    **engine_kwargs: Any,
) -> TwoStageQueryEngine:
    """A LlamaIndex ``RetrieverQueryEngine``: stage 1 as retriever, stage 2 as node postprocessor. It holds its
    store and models: ``close()`` it, or use it in a ``with`` block.

    ``llm`` defaults to LlamaIndex's ``Settings.llm``; pass ``response_mode="no_text"`` for retrieval only.
    Extra keyword arguments go to ``RetrieverQueryEngine.from_args`` (``response_mode``, ``streaming``, ...).
    """
    pipeline = TwoStagePipeline(settings, embed_model=embed_model)
    return _keeping_pipeline(pipeline, lambda built: built.query_engine(llm, filters=filters, **engine_kwargs))


def ingest_documents(
    documents: Sequence[Document],
    settings: RetrieverSettings,
    *,
    embed_model: BaseEmbedding | None = None,
    transformations: Sequence[TransformComponent] | None = None,
) -> IngestReport:
    """Chunk, embed and store ``documents`` in the settings' collection; safe to re-run and to resume.

    ``documents`` keep their ``id_`` as source id (``SimpleDirectoryReader(..., filename_as_id=True)`` keeps it
    stable); a document re-ingested with other content replaces its earlier chunks. ``embed_model`` replaces the
    settings' bi-encoder; ``transformations`` (any LlamaIndex chain) the settings' ``splitter``. The store is closed
    when the call returns.
    """
    with TwoStagePipeline(settings, embed_model=embed_model) as pipeline:
        return pipeline.ingest(documents, transformations=transformations)


def verify_collection_integrity(settings: RetrieverSettings) -> VerifyReport:
    """Read every record of the settings' collection and report what is inconsistent (``twostage verify``)."""
    with TwoStagePipeline(settings) as pipeline:
        return pipeline.verify()


__all__ = [
    "TwoStagePipeline",
    "TwoStageQueryEngine",
    "TwoStageRetriever",
    "build_query_engine",
    "build_reranker",
    "build_retriever",
    "build_two_stage_retriever",
    "ingest_documents",
    "verify_collection_integrity",
]
