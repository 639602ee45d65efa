"""Stage 2: ``CrossEncoderRerank``, a LlamaIndex node postprocessor that reads query and candidate together.

It is precise and expensive, so it does each pair once: candidates are de-duplicated, nodes without text are
skipped (and said so), pairs longer than the scorer's window are counted and reported, never silently cut, and
scores go through a score cache (:class:`~llama_index_twostage.stage2.caches.ScoreCache`), so a repeated query or
a ``recall_k`` sweep never scores a pair twice. An optional cascade lets a cheaper scorer (int8, or a shorter
window) cut the candidates to a ``cascade_k`` shortlist before the full scorer reads them.

:meth:`CrossEncoderRerank.rank` is the one ranking method: the postprocessor and the evaluation both call it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from llama_index_twostage.closing import ClosesOwner
from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.events import Stage2Event
from llama_index_twostage.nodes import annotated, query_text
from llama_index_twostage.stage2.backends import BackendSetting, RerankBackend
from llama_index_twostage.stage2.caches import Lookup, ScoreCache, ScoredPairs, pair_keys
from llama_index_twostage.stage2.plan import Plan, ScoreRequest, arun, run
from llama_index_twostage.stage2.scorers import PairScorer
from llama_index_twostage.stage2.templates import PairTemplate
from llama_index_twostage.timing import Stopwatch

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

LongDocuments = Literal["truncate", "max-window"]


def check_shortlist(cascade_k: int, top_k: int) -> None:
    if cascade_k < top_k:
        raise ConfigurationError(f"cascade_k ({cascade_k}) < top_k ({top_k}): the shortlist must hold top_k")


class CascadeConfig(BaseModel):
    """An optional cheap first pass of stage 2: a cheaper scorer reads every candidate and only its best ``k``
    reach the full cross-encoder. Off while ``k`` is unset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int | None = Field(
        None,
        gt=0,
        description="Off when unset. Otherwise a cheaper scorer (cascade_backend / cascade_max_length) reads all "
        "recall_k candidates and only its best cascade_k reach the full cross-encoder.",
    )
    backend: RerankBackend | None = Field(
        None, description="Backend of the cascade's cheap scorer; unset uses rerank_backend."
    )
    max_length: int | None = Field(
        None, gt=0, description="Token window of the cascade's cheap scorer; unset uses max_length."
    )

    def cheap_scorer(self, backend: BackendSetting, max_length: int | None) -> tuple[BackendSetting, int | None]:
        """The backend and window of the cheap scorer, beside a reranker of ``backend`` and ``max_length``."""
        return self.backend or backend, self.max_length or max_length

    def check(self, top_k: int, backend: BackendSetting, max_length: int | None) -> None:
        """Refuse a cascade that cannot help, before any model is loaded."""
        if self.k is None:
            return
        check_shortlist(self.k, top_k)
        if backend == "http" and self.backend is None:
            raise ConfigurationError(
                "cascade_k with rerank_backend 'http' needs a local cheap scorer: set cascade_backend (e.g. "
                "'onnx-int8'); it loads rerank_model, so serve the model under that name"
            )
        if self.cheap_scorer(backend, max_length) == (backend, max_length):
            raise ConfigurationError(
                "cascade_k is set but the cascade scorer equals the reranker: set cascade_backend (e.g. 'onnx-int8') "
                "or a shorter cascade_max_length"
            )


@dataclass
class Candidates:
    """The nodes worth scoring, and what was set aside on the way (reported, never silently dropped)."""

    scorable: list[NodeWithScore]
    texts: list[str]
    duplicate_ids: list[str]
    non_text_ids: list[str]


def select_candidates(nodes: list[NodeWithScore], template: PairTemplate | None = None) -> Candidates:
    """Keep the first occurrence of each node id (its best stage-1 rank) and only nodes that have text, written as
    ``template`` says."""
    template = template or PairTemplate()
    seen: set[str] = set()
    candidates = Candidates([], [], [], [])
    for scored in nodes:
        node_id = scored.node.node_id
        if node_id in seen:
            candidates.duplicate_ids.append(node_id)
            continue
        seen.add(node_id)
        text = template.document(scored.node)
        if text is None:
            candidates.non_text_ids.append(node_id)
            continue
        candidates.scorable.append(scored)
        candidates.texts.append(text)
    return candidates


def shortlist(scores: list[float], k: int) -> list[int]:
    """Indices of the ``k`` best scores, in their original (stage-1) order; ties go to the earlier candidate."""
    best = sorted(range(len(scores)), key=lambda index: -scores[index])[:k]
    return sorted(best)


@dataclass
class RerankEvents:
    """One reranking call as its events see it: the query, and the nodes it returned once it has."""

    query: str
    reranked: list[NodeWithScore] = field(default_factory=list)


@dataclass(frozen=True)
class Ranking:
    """The reranker's verdict on one candidate list.

    ``nodes`` and ``scores``: every candidate that survived de-duplication, the cascade and ``score_threshold``,
    best first (ties keep stage-1 order), not yet cut to ``top_k``. ``info``: what it cost and what was set aside
    (``pairs_scored``, ``pairs_cached``, ``pairs_truncated`` where the scorer has a window (not a rerank server's),
    ``duplicates_removed``, ``skipped_non_text``, ``cascade_pairs_scored``/``cascade_pairs_cached`` when the cascade
    pruned, and ``documents_windowed`` in ``max-window`` mode). ``pairs_scored`` counts every (query, window) pair
    read, so windows cost what they cost.
    """

    nodes: list[NodeWithScore]
    scores: list[float]
    info: dict[str, int]
    non_text_ids: list[str] = field(default_factory=list)


def check_cascade(scorer: PairScorer, cascade_scorer: PairScorer | None, cascade_k: int | None, top_k: int) -> None:
    """The cascade's rules, checked whichever way a reranker is built."""
    if (cascade_scorer is None) != (cascade_k is None):
        raise ConfigurationError(
            "the cascade needs both cascade_scorer and cascade_k: give both to prune with a cheap scorer, or neither"
        )
    if cascade_scorer is None or cascade_k is None:
        return
    check_shortlist(cascade_k, top_k)
    if cascade_scorer.cache_key == scorer.cache_key:
        raise ConfigurationError(
            "the cascade scorer equals the reranker's scorer: use a cheaper one (e.g. backend 'onnx-int8' or a "
            "shorter max_length)"
        )


def check_windows(*scorers: PairScorer | None) -> None:
    """Windows are cut by the scorer's own tokenizer; a scorer that does not know it cannot window."""
    blind = [scorer.name for scorer in scorers if scorer is not None and scorer.window is None]
    if blind:
        raise ConfigurationError(
            f"long_documents='max-window' needs scorers that know their tokenizer (a window); {blind} do not: use "
            "'truncate' with them"
        )


class CrossEncoderRerank(ClosesOwner, BaseNodePostprocessor):
    """Rerank stage-1 candidates with a :class:`~llama_index_twostage.stage2.scorers.PairScorer`; keep ``top_k``.

    Each returned node is a copy whose ``metadata["twostage"]`` keeps its stage-1 rank and score and adds
    ``rerank_score``, ``final_rank``, ``stage2_ms`` and the counts of :class:`Ranking` ``.info``.

    Args:
        scorer: what reads the pairs, e.g. ``CrossEncoderScorer.load("cross-encoder/ms-marco-MiniLM-L6-v2")``.
        top_k: nodes returned.
        score_threshold: drop nodes scoring below it (in the scorer's scale).
        cascade_scorer, cascade_k: optional cheap scorer that reads every candidate; only its best ``cascade_k``
            reach ``scorer``. ``cascade_k >= top_k`` and a scorer other than ``scorer`` are required.
        score_cache: where scores are looked up before scoring (None: every pair is scored). Pass one cache to
            several rerankers to share their scores; the cache key names the scorer, so scores never mix.
        template: what the cross-encoder reads for the query and each candidate (default: the query, and the text
            the bi-encoder embedded); see :class:`~llama_index_twostage.stage2.templates.PairTemplate`.
        long_documents: ``"truncate"`` (a pair longer than the window is cut, and reported) or ``"max-window"``
            (a long candidate is read as overlapping windows that fit beside the query; its score is the best
            window's, as Cohere's rerank does). Windows need a scorer that knows its tokenizer.
        window_overlap: tokens shared by consecutive windows.
    """

    top_k: int = Field(default=5, gt=0, description="Nodes returned after reranking.")
    score_threshold: float | None = Field(
        default=None, allow_inf_nan=False, description="Drop nodes scoring below this (a finite number)."
    )
    cascade_k: int | None = Field(default=None, gt=0, description="Shortlist size of the cascade; None: off.")
    long_documents: LongDocuments = Field(default="truncate", description="'truncate' or 'max-window'.")
    window_overlap: int = Field(default=32, ge=0, description="Tokens shared by consecutive windows.")
    _scorer: PairScorer = PrivateAttr()
    _cascade_scorer: PairScorer | None = PrivateAttr(default=None)
    _score_cache: ScoreCache | None = PrivateAttr(default=None)
    _template: PairTemplate = PrivateAttr(default_factory=PairTemplate)

    def __init__(
        self,
        scorer: PairScorer,
        *,
        top_k: int = 5,
        score_threshold: float | None = None,
        cascade_scorer: PairScorer | None = None,
        cascade_k: int | None = None,
        score_cache: ScoreCache | None = None,
        template: PairTemplate | None = None,
        long_documents: LongDocuments = "truncate",
        window_overlap: int = 32,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        super().__init__(
            top_k=top_k,
            score_threshold=score_threshold,
            cascade_k=cascade_k,
            long_documents=long_documents,
            window_overlap=window_overlap,
            callback_manager=callback_manager or CallbackManager(),
        )
        if not isinstance(scorer, PairScorer):
            raise ConfigurationError(f"scorer {scorer!r} is not a PairScorer (name, cache_key, window, score)")
        check_cascade(scorer, cascade_scorer, cascade_k, top_k)
        if long_documents == "max-window":
            check_windows(scorer, cascade_scorer)
        self._scorer = scorer
        self._cascade_scorer = cascade_scorer
        self._score_cache = score_cache
        self._template = template or PairTemplate()

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderRerank"

    @property
    def scorer(self) -> PairScorer:
        return self._scorer

    @property
    def cascade_scorer(self) -> PairScorer | None:
        return self._cascade_scorer

    @property
    def score_cache(self) -> ScoreCache | None:
        return self._score_cache

    @property
    def template(self) -> PairTemplate:
        return self._template

    def with_score_cache(self, score_cache: ScoreCache | None) -> CrossEncoderRerank:
        """The same reranker (scorers and rules) looking scores up in another cache."""
        return type(self)(
            self._scorer,
            top_k=self.top_k,
            score_threshold=self.score_threshold,
            cascade_scorer=self._cascade_scorer,
            cascade_k=self.cascade_k,
            score_cache=score_cache,
            template=self._template,
            long_documents=self.long_documents,
            window_overlap=self.window_overlap,
            callback_manager=self.callback_manager,
        )

    def _windows(self, scorer: PairScorer, query: str, texts: list[str]) -> list[list[str]]:
        """What ``scorer`` reads of each text: the text itself, or in ``max-window`` mode its windows."""
        window = scorer.window
        if self.long_documents == "truncate" or window is None:
            return [[text] for text in texts]
        return window.split(query, texts, self.window_overlap)

    def _score_windows(self, scorer: PairScorer, query: str, windows: list[list[str]]) -> Plan[ScoredPairs]:
        """One score per text, its best window's, through the score cache; every window counts as a pair."""
        flat = [text for text_windows in windows for text in text_windows]
        lookup = Lookup(self._score_cache, pair_keys(scorer.cache_key, query, flat), flat)
        fresh = (yield ScoreRequest(scorer, query, lookup.todo)) if lookup.todo else []
        flat_scores, cached = lookup.complete(fresh)
        scores, position = [], 0
        for text_windows in windows:
            scores.append(max(flat_scores[position : position + len(text_windows)]))
            position += len(text_windows)
        windowed = sum(len(text_windows) > 1 for text_windows in windows)
        return ScoredPairs(scores, cached, len(flat_scores), windowed)

    def _score_with(self, scorer: PairScorer, query: str, texts: list[str]) -> Plan[ScoredPairs]:
        """:meth:`score_with` as a plan."""
        return (yield from self._score_windows(scorer, query, self._windows(scorer, query, texts)))

    def score_with(self, scorer: PairScorer, query: str, texts: list[str]) -> ScoredPairs:
        """Scores of the (already formatted) pairs by ``scorer``, through the score cache; in ``max-window`` mode a
        long text scores its best window, and every window counts as a pair."""
        return run(self._score_with(scorer, query, texts))

    def score(self, query: str, texts: list[str]) -> list[float]:
        """The ranking scorer's scores for (query, text) pairs, as Python floats, in the order given (the texts as
        the cross-encoder reads them: :attr:`template` is applied by :meth:`rank`, not here)."""
        return self.score_with(self._scorer, query, texts).scores

    def _cascade(self, query: str, candidates: Candidates) -> Plan[tuple[Candidates, dict[str, int]]]:
        """The candidates the cheap scorer ranks in its best ``cascade_k`` (all when the cascade is off or moot)."""
        cheap, keep_k = self._cascade_scorer, self.cascade_k
        if cheap is None or keep_k is None or len(candidates.texts) <= keep_k:
            return candidates, {}
        scored = yield from self._score_with(cheap, query, candidates.texts)
        keep = shortlist(scored.scores, keep_k)
        kept = replace(
            candidates,
            scorable=[candidates.scorable[index] for index in keep],
            texts=[candidates.texts[index] for index in keep],
        )
        return kept, {"cascade_pairs_scored": scored.pairs, "cascade_pairs_cached": scored.cached}

    def _rank(self, query: str, nodes: list[NodeWithScore]) -> Plan[Ranking]:
        """:meth:`rank` as a plan: every scorer call is a request its driver answers (:mod:`.plan`)."""
        query = self._template.query(query)
        candidates, cascade_info = yield from self._cascade(query, select_candidates(nodes, self._template))
        windows = self._windows(self._scorer, query, candidates.texts)
        scored = yield from self._score_windows(self._scorer, query, windows)
        scores = scored.scores
        window = self._scorer.window
        read = [text for text_windows in windows for text in text_windows]
        # A scorer without a window (a rerank server) truncates by the server's: the count is unknown, not zero.
        truncated = {"pairs_truncated": window.count_truncated(query, read)} if window is not None else {}
        order = sorted(range(len(scores)), key=lambda index: -scores[index])
        if self.score_threshold is not None:
            order = [index for index in order if scores[index] >= self.score_threshold]
        info = {
            "pairs_scored": scored.pairs,
            "pairs_cached": scored.cached,
            **truncated,
            **({"documents_windowed": scored.windowed} if self.long_documents == "max-window" else {}),
            "duplicates_removed": len(candidates.duplicate_ids),
            "skipped_non_text": len(candidates.non_text_ids),
            **cascade_info,
        }
        return Ranking(
            [candidates.scorable[index] for index in order],
            [scores[index] for index in order],
            info,
            candidates.non_text_ids,
        )

    def rank(self, query: str, nodes: list[NodeWithScore]) -> Ranking:
        """Format the pairs (:attr:`template`), de-duplicate, prune (cascade), score, sort (ties keep stage-1
        order) and apply ``score_threshold``. ``query`` is the user's query, before the template."""
        return run(self._rank(query, nodes))

    async def arank(self, query: str, nodes: list[NodeWithScore]) -> Ranking:
        """:meth:`rank` without blocking the event loop: a scorer with ``ascore`` (a rerank server) is awaited, a
        local one runs in a worker thread."""
        return await arun(self._rank(query, nodes))

    def _report(self, ranking: Ranking) -> None:
        if ranking.non_text_ids:
            logger.warning(
                "skipped %d candidates without text (ids: %s)",
                len(ranking.non_text_ids),
                ", ".join(ranking.non_text_ids[:5]),
            )
        truncated = ranking.info.get("pairs_truncated")
        if truncated and self._scorer.window is not None:
            logger.warning(
                "%d of %d (query, candidate) pairs exceed the cross-encoder window of %d tokens and were truncated; "
                "raise max_length (up to the model's limit) or ingest smaller chunks",
                truncated,
                ranking.info["pairs_scored"],
                self._scorer.window.max_tokens,
            )

    @dispatcher.span
    def rerank(self, nodes: list[NodeWithScore], query: str) -> list[NodeWithScore]:
        """:meth:`rank`, cut to ``top_k``; returns annotated copies (the caller's nodes are never mutated). A span of
        its own, with a :class:`~llama_index_twostage.events.Stage2Event`."""
        with Stopwatch() as watch:
            ranking = self.rank(query, nodes)
        return self._results(nodes, ranking, watch.ms)

    @dispatcher.span
    async def arerank(self, nodes: list[NodeWithScore], query: str) -> list[NodeWithScore]:
        """:meth:`rerank` through :meth:`arank`."""
        with Stopwatch() as watch:
            ranking = await self.arank(query, nodes)
        return self._results(nodes, ranking, watch.ms)

    def _results(self, nodes: list[NodeWithScore], ranking: Ranking, stage2_ms: float) -> list[NodeWithScore]:
        """The best ``top_k`` of ``ranking`` as annotated copies, after its warnings are logged and its event sent."""
        self._report(ranking)
        info: dict[str, Any] = {"stage2_ms": stage2_ms, **ranking.info}
        backend = getattr(self._scorer, "backend", None)  # optional in the protocol: local scorers name their runtime
        if backend is not None:
            info["rerank_backend"] = backend
        results = [
            annotated(scored, score=score, rerank_score=score, final_rank=rank, **info)
            for rank, (scored, score) in enumerate(zip(ranking.nodes[: self.top_k], ranking.scores), 1)
        ]
        event = Stage2Event(candidates=len(nodes), returned=len(results), stage2_ms=stage2_ms, counts=ranking.info)
        dispatcher.event(event)
        return results

    @contextmanager
    def _events(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> Iterator[RerankEvents]:
        """LlamaIndex's rerank events and callbacks around one call, sync or async."""
        if query_bundle is None:
            raise ValueError("CrossEncoderRerank needs the query: pass query_bundle or query_str")
        query = query_text(query_bundle)
        model_name = self._scorer.name
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_k, model_name=model_name))
        payload = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_k,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            events = RerankEvents(query)
            yield events
            event.on_end(payload={EventPayload.NODES: events.reranked})
        dispatcher.event(ReRankEndEvent(nodes=events.reranked))

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        with self._events(nodes, query_bundle) as events:
            events.reranked = self.rerank(nodes, events.query)
        return events.reranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """A rerank server is awaited and local forward passes run in a worker thread, so the event loop keeps
        serving other requests."""
        with self._events(nodes, query_bundle) as events:
            events.reranked = await self.arerank(nodes, events.query)
        return events.reranked
