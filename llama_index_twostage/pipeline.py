"""The factory: reads ``RetrieverSettings``, builds each heavy object once and hands it to the components that use it.

Object graph of one :class:`TwoStagePipeline`::

    TwoStagePipeline (owner: close() releases what it created)
      ├── store: ChromaStore ─────────────── sync + async Chroma clients, collection contract, retries, timeouts
      ├── lexical: LexicalFolder ─────────── BM25 index of the same records on this host (generations, atomic reindex)
      ├── follower: LexicalFollower ──────── keeps it in step through Chroma's change feed (every lexical_refresh_s)
      ├── models: ModelPool ──────────────── each bi-encoder / cross-encoder (or rerank server client) once
      ├── score_cache: ScoreCache ─────────── shared by every reranker it builds
      ├── retriever()   -> ChromaRecallRetriever(store, embed_model, recall_k, filters)      stage 1 (dense)
      │                    or HybridRecallRetriever(that, lexical, mode, rrf_k, weights)          (hybrid/lexical)
      ├── reranker()    -> CrossEncoderRerank(CrossEncoderScorer, cascade scorer, score_cache,  stage 2
      │                                      PairTemplate, long-document mode)
      ├── two_stage_retriever() / query_engine(llm)                                          both stages
      └── ingest(documents), delete(ref_doc_ids) (write both indexes and the feed), verify(repair), reindex()

Stage 1 and stage 2 know nothing of each other; only this module wires them. The module-level ``build_*`` and
``ingest_documents`` functions are the two-line conveniences: each builds a pipeline for the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import BaseNode, Document, NodeWithScore, QueryBundle, TransformComponent

from llama_index_twostage.closing import Closing
from llama_index_twostage.ingest import Chunking, DeleteReport, IngestReport, delete_documents, ingest_into
from llama_index_twostage.ingest.transform import GivenNodes, Splitting, Transformations, preset
from llama_index_twostage.models import ModelPool
from llama_index_twostage.settings import RetrieverSettings, Stage1Mode
from llama_index_twostage.stage1 import ChromaRecallRetriever, HybridRecallRetriever
from llama_index_twostage.stage2 import CrossEncoderRerank, ScoreCache
from llama_index_twostage.store import (
    Analyser,
    ChromaStore,
    LexicalFolder,
    LexicalFollower,
    LexicalIndex,
    TantivyIndex,
    VerifyReport,
    rebuild,
    reconcile,
    verify_store,
)

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import LLM
    from llama_index.core.vector_stores.types import MetadataFilters


SERVER_LEXICAL_ROOT = Path("./.twostage/lexical")  # a Chroma server's records, BM25-indexed on this host


def lexical_path(settings: RetrieverSettings) -> Path | None:
    """Where the settings' collection keeps its BM25 index: ``lexical_dir/<collection>``, by default beside an
    embedded store (``persist_dir/twostage-lexical``) or, for a server, in a local folder per host; None (in memory)
    for the in-memory store. Nothing is created until the index is first written."""
    if settings.lexical_dir is not None:
        root = settings.lexical_dir
    elif settings.chroma_mode == "memory":
        return None
    elif settings.chroma_mode == "server":
        root = SERVER_LEXICAL_ROOT / f"{settings.chroma_host}-{settings.chroma_port}"
    else:
        root = settings.persist_dir / "twostage-lexical"
    return root / settings.collection


class TwoStageRetriever(BaseRetriever):
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
        self.store = store if store is not None else ChromaStore.from_settings(settings)
        self.lexical: LexicalIndex = lexical if lexical is not None else self._lexical_index(settings)
        self.follower = LexicalFollower(
            self.store, self.lexical, refresh_s=settings.lexical_refresh_s, page_size=settings.upsert_batch_size
        )
        self.score_cache = ScoreCache(settings.score_cache_size) if settings.score_cache_size else None
        self._embed_model = embed_model

    @staticmethod
    def _lexical_index(settings: RetrieverSettings) -> LexicalIndex:
        path = lexical_path(settings)
        analyser = Analyser(settings.lexical_language)
        if path is None:
            return TantivyIndex(None, analyser)
        return LexicalFolder(path, root=settings.lexical_dir, analyser=analyser)

    @property
    def embed_model(self) -> BaseEmbedding:
        """The bi-encoder, loaded on first use."""
        if self._embed_model is None:
            settings = self.settings
            self._embed_model = self.models.embedding(
                settings.embed_model,
                device=settings.device,
                batch_size=settings.embed_batch_size,
                trust_remote_code=settings.trust_remote_code,
                backend=settings.embed_backend,
                cache_dir=settings.model_cache_dir,
            )
        return self._embed_model

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
        )
        mode = stage1_mode or settings.stage1_mode
        if mode == "dense":
            return dense
        return HybridRecallRetriever(
            dense,
            self.lexical,
            follower=self.follower,
            mode=mode,
            rrf_k=settings.rrf_k,
            dense_weight=settings.dense_weight,
            lexical_weight=settings.lexical_weight,
        )

    def reranker(self) -> CrossEncoderRerank:
        """Stage 2, as a LlamaIndex node postprocessor usable in any query engine."""
        return CrossEncoderRerank.from_settings(self.settings, pool=self.models, score_cache=self.score_cache)

    def two_stage_retriever(self, *, filters: MetadataFilters | None = None) -> TwoStageRetriever:
        """Both stages behind the ``BaseRetriever`` interface."""
        return TwoStageRetriever(self.retriever(filters=filters), self.reranker())

    def query_engine(
        self, llm: LLM | None = None, *, filters: MetadataFilters | None = None, **engine_kwargs: Any
    ) -> RetrieverQueryEngine:
        """A ``RetrieverQueryEngine``: stage 1 as retriever, stage 2 as the last node postprocessor."""
        postprocessors = [*engine_kwargs.pop("node_postprocessors", []), self.reranker()]
        return RetrieverQueryEngine.from_args(
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

    def close(self) -> None:
        """Release the store's clients, the lexical index and the loaded models (a rerank server's HTTP clients too),
        where this pipeline created them."""
        if self._owns_store:
            self.store.close()
        if self._owns_lexical:
            self.lexical.close()
        if self._owns_models:
            self.models.close()


def build_retriever(
    settings: RetrieverSettings, *, embed_model: BaseEmbedding | None = None, filters: MetadataFilters | None = None
) -> ChromaRecallRetriever:
    """Stage 1 alone (its store stays open as long as the retriever is used)."""
    return TwoStagePipeline(settings, embed_model=embed_model).retriever(filters=filters)


def build_reranker(settings: RetrieverSettings) -> CrossEncoderRerank:
    """Stage 2 alone, as a LlamaIndex node postprocessor."""
    return TwoStagePipeline(settings).reranker()


def build_two_stage_retriever(
    settings: RetrieverSettings, *, embed_model: BaseEmbedding | None = None, filters: MetadataFilters | None = None
) -> TwoStageRetriever:
    """Both stages behind the ``BaseRetriever`` interface."""
    return TwoStagePipeline(settings, embed_model=embed_model).two_stage_retriever(filters=filters)


def build_query_engine(
    settings: RetrieverSettings,
    llm: LLM | None = None,
    *,
    embed_model: BaseEmbedding | None = None,
    filters: MetadataFilters | None = None,
    **engine_kwargs: Any,
) -> RetrieverQueryEngine:
    """A LlamaIndex ``RetrieverQueryEngine``: stage 1 as retriever, stage 2 as node postprocessor.

    ``llm`` defaults to LlamaIndex's ``Settings.llm``; pass ``response_mode="no_text"`` for retrieval only.
    Extra keyword arguments go to ``RetrieverQueryEngine.from_args`` (``response_mode``, ``streaming``, ...).
    """
    pipeline = TwoStagePipeline(settings, embed_model=embed_model)
    return pipeline.query_engine(llm, filters=filters, **engine_kwargs)


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
    "TwoStageRetriever",
    "build_query_engine",
    "build_reranker",
    "build_retriever",
    "build_two_stage_retriever",
    "ingest_documents",
    "verify_collection_integrity",
]
