"""Stage 1 from two signals: the bi-encoder over Chroma and BM25 over the lexical index, fused by reciprocal rank.

A bi-encoder smooths away what only exact words carry (gene and drug names, identifiers, rare terms); BM25 keeps
them. Each side proposes ``recall_k`` candidates, :func:`~llama_index_twostage.stage1.fusion.reciprocal_rank_fusion`
merges them, and the best ``recall_k`` go on: more of the relevant documents reach the reranker for the same number
of cross-encoder passes. Every lexical hit is read back from Chroma with the retriever's filters, so a chunk that
is filtered out, or deleted since the lexical index last saw it, never appears. Before a query the lexical index
catches up with Chroma's change feed (at most every ``lexical_refresh_s``); a query never waits for, or fails on,
another process writing the index: it answers from what the index holds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.schema import NodeWithScore, QueryBundle

from llama_index_twostage.closing import ClosesOwner
from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.events import RecallSideEvent, Stage1Event
from llama_index_twostage.nodes import node_from_record, query_text
from llama_index_twostage.stage1.fusion import FusionConfig, Side, reciprocal_rank_fusion
from llama_index_twostage.stage1.retriever import ChromaRecallRetriever, Recalled, Record
from llama_index_twostage.store.chroma import ChromaStore
from llama_index_twostage.store.feed import LexicalFollower
from llama_index_twostage.store.lexical import LexicalHits, LexicalIndex
from llama_index_twostage.timing import Stopwatch

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

NO_TERMS = "no searchable terms in the query (only stop words or punctuation): dense candidates only"
_WIDENING = 4  # with filters, lexical hits that fail them are replaced by asking for this many times more ...
_DEEPEST = 64  # ... down to this many times recall_k: a filter that passes fewer hits leaves the lexical side short


def found_by(info: dict[str, Any]) -> str:
    """Which side of stage 1 found a candidate, from its stage metadata: ``dense``, ``lexical`` or ``both``
    (candidates of a dense-only retriever carry no side ranks: ``dense``)."""
    sides = [side for side in ("dense", "lexical") if f"{side}_rank" in info]
    return "both" if len(sides) == 2 else sides[0] if sides else "dense"


class HybridRecallRetriever(ClosesOwner, BaseRetriever):
    """Stage 1 as dense + BM25 candidates fused by reciprocal rank (``mode="hybrid"``), or BM25 alone
    (``mode="lexical"``).

    Each node's ``metadata["twostage"]`` holds ``stage1_rank`` and ``stage1_score`` (the fused score; with one side,
    that side's score), ``stage1_mode``, and ``dense_rank``/``dense_score`` (cosine) and ``lexical_rank``/
    ``lexical_score`` (BM25) for each side that found it. A query without searchable terms falls back to dense
    candidates and says so in ``stage1_fallback``.

    Args:
        dense: the bi-encoder side; its store, filters and ``recall_k`` are this retriever's.
        lexical: the BM25 index that follows ``dense.store``.
        follower: what keeps ``lexical`` in step through the change feed (the pipeline shares one per index; by
            default this retriever makes its own, refreshing before every query).
        mode: ``hybrid`` or ``lexical``.
        fusion: the fusion constant and each side's weight (:class:`FusionConfig`).
    """

    def __init__(
        self,
        dense: ChromaRecallRetriever,
        lexical: LexicalIndex,
        *,
        follower: LexicalFollower | None = None,
        mode: Literal["hybrid", "lexical"] = "hybrid",
        fusion: FusionConfig | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if mode not in ("hybrid", "lexical"):
            raise ConfigurationError(f"mode must be 'hybrid' or 'lexical', got {mode!r} (dense: ChromaRecallRetriever)")
        super().__init__(callback_manager=callback_manager or dense.callback_manager)
        self.dense = dense
        self.lexical = lexical
        self.follower = follower or LexicalFollower(dense.store, lexical, refresh_s=0)
        self.mode = mode
        self.fusion = fusion or FusionConfig()
        self._opened = False
        self._open_lock = threading.Lock()

    @property
    def recall_k(self) -> int:
        return self.dense.recall_k

    @property
    def store(self) -> ChromaStore:
        """The Chroma store both sides read (the dense side's)."""
        return self.dense.store

    @property
    def embed_model(self) -> BaseEmbedding:
        return self.dense.embed_model

    def _catch_up(self) -> None:
        """The first query checks the index against Chroma (see ``LexicalFollower.open_check``); each query reads
        the change feed when ``refresh_s`` has passed. An in-memory store's index is this process's own: it may be
        rebuilt here."""
        own = self.dense.store.mode == "memory"
        collection = self.dense.collection()
        if not self._opened:
            with self._open_lock:
                if not self._opened:
                    self.follower.open_check(collection, own_index=own)
                    self._opened = True
                    return
        self.follower.refresh(collection, may_rebuild=own)

    def _search(self, text: str, limit: int) -> LexicalHits:
        if limit == self.recall_k:  # once per query, not per widening step
            self._catch_up()
        return self.lexical.search(text, limit)

    def _widened(self, hits: LexicalHits, records: dict[str, Record], limit: int) -> int | None:
        """The next, larger limit when filters left fewer than ``recall_k`` hits and the index has more, down to
        ``_DEEPEST`` times recall_k (each step reads its hits back from Chroma); else None."""
        wider = limit * _WIDENING
        short = sum(node_id in records for node_id in hits.ids) < self.recall_k and len(hits.ids) == limit
        return wider if short and wider <= _DEEPEST * self.recall_k else None

    def _lexical_side(self, hits: LexicalHits, records: dict[str, Record], elapsed_ms: float) -> Recalled | None:
        """The best ``recall_k`` hits that Chroma holds and the filters pass, with their BM25 scores."""
        if not hits.terms:
            dispatcher.event(RecallSideEvent(side="lexical", candidates=0, ms=elapsed_ms))
            return None
        kept = [(node_id, score) for node_id, score in zip(hits.ids, hits.scores) if node_id in records]
        ids = [node_id for node_id, _ in kept[: self.recall_k]]
        scores = [score for _, score in kept[: self.recall_k]]
        dispatcher.event(RecallSideEvent(side="lexical", candidates=len(ids), ms=elapsed_ms))
        return Recalled(ids, [records[i][0] for i in ids], [records[i][1] for i in ids], scores)

    @staticmethod
    def _unknown(hits: LexicalHits, known: dict[str, Record]) -> list[str]:
        """The hits to read back from Chroma: those the dense side did not already return (with the same filters)."""
        return [node_id for node_id in hits.ids if node_id not in known]

    @dispatcher.span
    def lexical_candidates(self, text: str, known: Recalled | None = None) -> Recalled | None:
        """BM25's ``recall_k`` best records that Chroma holds and the filters pass; None when the query has no
        searchable terms. ``known``: the dense side's candidates, whose records need no second read."""
        records = known.records() if known is not None else {}
        limit: int | None = self.recall_k
        with Stopwatch() as watch:
            while limit:
                hits = self._search(text, limit)
                records.update(self.dense.fetch(self._unknown(hits, records)))
                limit = self._widened(hits, records, limit)
        return self._lexical_side(hits, records, watch.ms)

    @dispatcher.span
    async def alexical_candidates(self, text: str, known: Recalled | None = None) -> Recalled | None:
        """:meth:`lexical_candidates`; the index search and Chroma's read-back run in worker threads."""
        records = known.records() if known is not None else {}
        limit: int | None = self.recall_k
        with Stopwatch() as watch:
            while limit:
                hits = await asyncio.to_thread(self._search, text, limit)
                records.update(await self.dense.afetch(self._unknown(hits, records)))
                limit = self._widened(hits, records, limit)
        return self._lexical_side(hits, records, watch.ms)

    def _ranking(self, sides: dict[Side, Recalled]) -> list[tuple[str, float]]:
        """Fused by reciprocal rank when both sides answered; one side's own order and scores otherwise."""
        if len(sides) == 1:
            (side,) = sides.values()
            return list(zip(side.ids, side.scores))
        return reciprocal_rank_fusion({name: side.ids for name, side in sides.items()}, self.fusion)

    @dispatcher.span
    def fuse(self, dense: Recalled | None, lexical: Recalled | None, elapsed_ms: float) -> list[NodeWithScore]:
        """The sides' candidates as one ranking of at most ``recall_k`` nodes, each with its stage metadata."""
        sides = {name: side for name, side in (("dense", dense), ("lexical", lexical)) if side is not None}
        common: dict[str, Any] = {"stage1_mode": self.mode if lexical is not None else "dense", "stage1_ms": elapsed_ms}
        if lexical is None:
            common["stage1_fallback"] = NO_TERMS
        if dense is not None:
            common.update(dense.notes)
        records = {node_id: record for side in sides.values() for node_id, record in side.records().items()}
        positions = {name: {node_id: rank for rank, node_id in enumerate(side.ids)} for name, side in sides.items()}
        nodes = []
        for rank, (node_id, score) in enumerate(self._ranking(sides)[: self.recall_k], 1):
            info = {**common, "stage1_rank": rank, "stage1_score": score}
            for name, side in sides.items():
                if node_id in positions[name]:
                    position = positions[name][node_id]
                    info[f"{name}_rank"], info[f"{name}_score"] = position + 1, side.scores[position]
            nodes.append(NodeWithScore(node=node_from_record(node_id, *records[node_id], info), score=score))
        stage1 = Stage1Event(
            mode=common["stage1_mode"],
            candidates=len(nodes),
            recall_k=self.recall_k,
            stage1_ms=elapsed_ms,
            fallback=common.get("stage1_fallback"),
        )
        dispatcher.event(stage1)
        return nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        text = query_text(query_bundle)
        with Stopwatch() as watch:
            dense = self.dense.recall(query_bundle) if self.mode == "hybrid" else None
            lexical = self.lexical_candidates(text, known=dense)
            if lexical is None and dense is None:  # lexical mode, a query without terms: dense after all
                dense = self.dense.recall(query_bundle)
        return self.fuse(dense, lexical, watch.ms)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """The dense side first (its records need no second read), then BM25 and the read-back, each in a worker
        thread: nothing blocks the event loop."""
        text = query_text(query_bundle)
        with Stopwatch() as watch:
            dense = await self.dense.arecall(query_bundle) if self.mode == "hybrid" else None
            lexical = await self.alexical_candidates(text, known=dense)
            if lexical is None and dense is None:
                dense = await self.dense.arecall(query_bundle)
        return self.fuse(dense, lexical, watch.ms)
