"""Stage 2: ``CrossEncoderRerank``, a LlamaIndex node postprocessor that reads query and candidate together.

It is precise and expensive, so it does each pair once: candidates are de-duplicated, nodes without text are
skipped (and said so), pairs longer than the model's window are counted and reported, never silently cut, and
scores go through a process-wide cache (:mod:`llama_index_twostage.score_cache`), so a repeated query or a
``recall_k`` sweep never scores a pair twice. An optional cascade lets a cheaper scorer (int8, or a shorter
window) cut ``recall_k`` candidates to a ``cascade_k`` shortlist before the full model reads them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from llama_index_twostage.models import DEFAULT_MODEL_CACHE, load_cross_encoder
from llama_index_twostage.nodes import annotated, model_text, query_text
from llama_index_twostage.score_cache import ScoredPairs, score_through, shared_score_cache, token_counts
from llama_index_twostage.settings import RerankBackend, RetrieverSettings
from llama_index_twostage.timing import Stopwatch

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)


@dataclass
class Candidates:
    """The nodes worth scoring, and what was set aside on the way (reported, never silently dropped)."""

    scorable: list[NodeWithScore]
    texts: list[str]
    duplicate_ids: list[str]
    non_text_ids: list[str]


def select_candidates(nodes: list[NodeWithScore]) -> Candidates:
    """Keep the first occurrence of each node id (its best stage-1 rank) and only nodes that have text."""
    seen: set[str] = set()
    candidates = Candidates([], [], [], [])
    for scored in nodes:
        node_id = scored.node.node_id
        if node_id in seen:
            candidates.duplicate_ids.append(node_id)
            continue
        seen.add(node_id)
        text = model_text(scored.node)
        if text is None:
            candidates.non_text_ids.append(node_id)
            continue
        candidates.scorable.append(scored)
        candidates.texts.append(text)
    return candidates


@dataclass(frozen=True)
class PairScorer:
    """One way of scoring (query, text) pairs: a model on a backend with a window. ``key`` names it in the cache."""

    model: str
    backend: RerankBackend
    max_length: int | None
    normalize: bool
    device: str | None
    trust_remote_code: bool
    batch_size: int
    cache_dir: Path

    @property
    def key(self) -> tuple[str, str, int | None, bool]:
        """What changes a score: model, backend (precision), window and activation; not device or batch size."""
        return (self.model, self.backend, self.max_length, self.normalize)

    @property
    def cross_encoder(self) -> CrossEncoder:
        return load_cross_encoder(
            self.model,
            device=self.device,
            max_length=self.max_length,
            trust_remote_code=self.trust_remote_code,
            backend=self.backend,
            cache_dir=self.cache_dir,
        )

    def predict(self, query: str, texts: list[str]) -> list[float]:
        """``CrossEncoder.predict`` on the pairs (it sorts them by length, so batches pad little), as floats."""
        model = self.cross_encoder
        activation = None
        if self.normalize and isinstance(model.activation_fn, torch.nn.Identity):
            activation = torch.nn.Sigmoid()
        scores = model.predict(
            [(query, text) for text in texts],
            batch_size=self.batch_size,
            activation_fn=activation,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(value) for value in scores]


def shortlist(scores: list[float], k: int) -> list[int]:
    """Indices of the ``k`` best scores, in their original (stage-1) order; ties go to the earlier candidate."""
    best = sorted(range(len(scores)), key=lambda index: -scores[index])[:k]
    return sorted(best)


class CrossEncoderRerank(BaseNodePostprocessor):
    """Rerank stage-1 candidates with a sentence-transformers ``CrossEncoder`` and keep the best ``top_k``.

    Scores are Python floats, exactly what ``CrossEncoder.predict`` returns for the same pairs (or their
    sigmoid with ``normalize=True`` for models that output logits). Each returned node is a copy whose
    ``metadata["twostage"]`` keeps its stage-1 rank and score and adds ``rerank_score``, ``final_rank``,
    ``stage2_ms``, ``pairs_scored``, ``pairs_cached`` (answered by the score cache) and ``pairs_truncated``;
    with the cascade on, also ``cascade_pairs_scored`` and ``cascade_pairs_cached``.
    """

    model: str = Field(description="Cross-encoder hub id or local directory.")
    top_k: int = Field(default=5, gt=0, description="Nodes returned after reranking.")
    batch_size: int = Field(default=32, gt=0, description="Pairs per forward pass.")
    max_length: int | None = Field(default=None, gt=0, description="Token window; None uses the model's.")
    device: str | None = Field(default=None, description="Torch device; None picks automatically.")
    normalize: bool = Field(default=False, description="Map scores to 0-1 with a sigmoid (if the model does not).")
    score_threshold: float | None = Field(default=None, description="Drop nodes scoring below this.")
    trust_remote_code: bool = Field(default=False, description="Run model code from the hub.")
    backend: RerankBackend = Field(default="torch", description="torch, torch-bf16, torch-fp16, onnx or onnx-int8.")
    model_cache_dir: Path = Field(default=DEFAULT_MODEL_CACHE, description="Folder of the ONNX exports.")
    score_cache_size: int = Field(default=50_000, ge=0, description="Scores cached per process; 0 disables.")
    cascade_k: int | None = Field(default=None, gt=0, description="Shortlist size of the cheap scorer; None: off.")
    cascade_backend: RerankBackend | None = Field(default=None, description="Cheap scorer's backend.")
    cascade_max_length: int | None = Field(default=None, gt=0, description="Cheap scorer's token window.")

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderRerank"

    @classmethod
    def from_settings(cls, settings: RetrieverSettings, **overrides: Any) -> CrossEncoderRerank:
        fields = {
            "model": settings.rerank_model,
            "top_k": settings.top_k,
            "batch_size": settings.rerank_batch_size,
            "max_length": settings.max_length,
            "device": settings.device,
            "normalize": settings.normalize_scores,
            "score_threshold": settings.score_threshold,
            "trust_remote_code": settings.trust_remote_code,
            "backend": settings.rerank_backend,
            "model_cache_dir": settings.model_cache_dir,
            "score_cache_size": settings.score_cache_size,
            "cascade_k": settings.cascade_k,
            "cascade_backend": settings.cascade_backend,
            "cascade_max_length": settings.cascade_max_length,
        }
        return cls(**{**fields, **overrides})

    def scorer(self) -> PairScorer:
        """The full cross-encoder whose scores rank the results."""
        return PairScorer(
            self.model,
            self.backend,
            self.max_length,
            self.normalize,
            self.device,
            self.trust_remote_code,
            self.batch_size,
            self.model_cache_dir,
        )

    def cascade_scorer(self) -> PairScorer | None:
        """The cheap scorer that cuts candidates to ``cascade_k``; None when the cascade is off."""
        if self.cascade_k is None:
            return None
        return replace(
            self.scorer(),
            backend=self.cascade_backend or self.backend,
            max_length=self.cascade_max_length or self.max_length,
        )

    @property
    def cross_encoder(self) -> CrossEncoder:
        """The model, loaded on first use and shared by every reranker with the same model settings."""
        return self.scorer().cross_encoder

    def count_truncated(self, query: str, texts: list[str]) -> int:
        """How many (query, text) pairs exceed the model's window and lose tokens to truncation.

        A pair's length is its query's tokens, its text's and the tokenizer's special tokens. Text counts come from
        the process-wide token-count cache, so a text is tokenized for counting once, not on every query (the
        model's own tokenization happens only for pairs the score cache does not answer).
        """
        model = self.cross_encoder
        tokenizer = model.tokenizer

        def count(batch: list[str]) -> list[int]:
            return [len(ids) for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]]

        room = model.max_seq_length - tokenizer.num_special_tokens_to_add(pair=True) - count([query])[0]
        return sum(tokens > room for tokens in token_counts(self.model, texts, count))

    def score_with(self, scorer: PairScorer, query: str, texts: list[str]) -> ScoredPairs:
        """Scores of the pairs by ``scorer``, through the process-wide score cache."""
        cache = shared_score_cache(self.score_cache_size)
        return score_through(cache, scorer.key, query, texts, lambda missing: scorer.predict(query, missing))

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Cross-encoder scores for (query, text) pairs, as Python floats, in the order given."""
        return self.score_with(self.scorer(), query, texts).scores

    def _report(self, candidates: Candidates, truncated: int) -> None:
        if candidates.non_text_ids:
            logger.warning(
                "skipped %d candidates without text (ids: %s)",
                len(candidates.non_text_ids),
                ", ".join(candidates.non_text_ids[:5]),
            )
        if truncated:
            logger.warning(
                "%d of %d (query, candidate) pairs exceed the cross-encoder window of %d tokens and were truncated; "
                "raise max_length (up to the model's limit) or ingest smaller chunks",
                truncated,
                len(candidates.texts),
                self.cross_encoder.max_seq_length,
            )

    def _cascade(self, query: str, candidates: Candidates) -> tuple[Candidates, dict[str, int]]:
        """The candidates the cheap scorer ranks in its best ``cascade_k`` (all when the cascade is off or moot)."""
        cheap = self.cascade_scorer()
        if cheap is None or self.cascade_k is None or len(candidates.texts) <= self.cascade_k:
            return candidates, {}
        scored = self.score_with(cheap, query, candidates.texts)
        keep = shortlist(scored.scores, self.cascade_k)
        kept = replace(
            candidates,
            scorable=[candidates.scorable[index] for index in keep],
            texts=[candidates.texts[index] for index in keep],
        )
        return kept, {"cascade_pairs_scored": len(scored.scores), "cascade_pairs_cached": scored.cached}

    def load(self) -> None:
        """Load (or export) every model this reranker uses, so the first query times scoring, not loading."""
        for scorer in (self.scorer(), self.cascade_scorer()):
            if scorer is not None:
                _ = scorer.cross_encoder

    def rerank(self, nodes: list[NodeWithScore], query: str) -> list[NodeWithScore]:
        """Score, sort (ties keep stage-1 order), threshold and cut to ``top_k``; returns annotated copies."""
        self.load()  # before timing: stage2_ms is scoring time, not model loading
        with Stopwatch() as watch:
            candidates, cascade_info = self._cascade(query, select_candidates(nodes))
            truncated = self.count_truncated(query, candidates.texts) if candidates.texts else 0
            scored = self.score_with(self.scorer(), query, candidates.texts)
        self._report(candidates, truncated)
        scores = scored.scores
        order = sorted(range(len(scores)), key=lambda index: -scores[index])
        if self.score_threshold is not None:
            order = [index for index in order if scores[index] >= self.score_threshold]
        info = {
            "stage2_ms": watch.ms,
            "pairs_scored": len(scores),
            "pairs_cached": scored.cached,
            "pairs_truncated": truncated,
            "duplicates_removed": len(candidates.duplicate_ids),
            "skipped_non_text": len(candidates.non_text_ids),
            **cascade_info,
        }
        return [
            annotated(
                candidates.scorable[index], score=scores[index], rerank_score=scores[index], final_rank=rank, **info
            )
            for rank, index in enumerate(order[: self.top_k], 1)
        ]

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("CrossEncoderRerank needs the query: pass query_bundle or query_str")
        query = query_text(query_bundle)
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_k, model_name=self.model))
        payload = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_k,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            reranked = self.rerank(nodes, query)
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """The forward passes run in a worker thread, so the event loop keeps serving other requests."""
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)
