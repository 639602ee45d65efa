"""Stage 2: ``CrossEncoderRerank``, a LlamaIndex node postprocessor that reads query and candidate together.

It is precise and expensive, so it does each pair once: candidates are de-duplicated, nodes without text are
skipped (and said so), and pairs longer than the model's window are counted and reported, never silently cut.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from llama_index_twostage.models import load_cross_encoder
from llama_index_twostage.nodes import annotated, model_text, query_text
from llama_index_twostage.settings import RetrieverSettings
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


class CrossEncoderRerank(BaseNodePostprocessor):
    """Rerank stage-1 candidates with a sentence-transformers ``CrossEncoder`` and keep the best ``top_k``.

    Scores are Python floats, exactly what ``CrossEncoder.predict`` returns for the same pairs (or their
    sigmoid with ``normalize=True`` for models that output logits). Each returned node is a copy whose
    ``metadata["twostage"]`` keeps its stage-1 rank and score and adds ``rerank_score``, ``final_rank``,
    ``stage2_ms``, ``pairs_scored`` and ``pairs_truncated``.
    """

    model: str = Field(description="Cross-encoder hub id or local directory.")
    top_k: int = Field(default=5, gt=0, description="Nodes returned after reranking.")
    batch_size: int = Field(default=32, gt=0, description="Pairs per forward pass.")
    max_length: int | None = Field(default=None, gt=0, description="Token window; None uses the model's.")
    device: str | None = Field(default=None, description="Torch device; None picks automatically.")
    normalize: bool = Field(default=False, description="Map scores to 0-1 with a sigmoid (if the model does not).")
    score_threshold: float | None = Field(default=None, description="Drop nodes scoring below this.")
    trust_remote_code: bool = Field(default=False, description="Run model code from the hub.")

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
        }
        return cls(**{**fields, **overrides})

    @property
    def cross_encoder(self) -> CrossEncoder:
        """The model, loaded on first use and shared by every reranker with the same model settings."""
        return load_cross_encoder(
            self.model, device=self.device, max_length=self.max_length, trust_remote_code=self.trust_remote_code
        )

    def count_truncated(self, query: str, texts: list[str]) -> int:
        """How many (query, text) pairs exceed the model's window and lose tokens to truncation."""
        model = self.cross_encoder
        encoded = model.tokenizer([query] * len(texts), texts, truncation=False, verbose=False)
        return sum(len(ids) > model.max_seq_length for ids in encoded["input_ids"])

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Cross-encoder scores for (query, text) pairs, as Python floats, in the order given."""
        if not texts:
            return []
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

    def rerank(self, nodes: list[NodeWithScore], query: str) -> list[NodeWithScore]:
        """Score, sort (ties keep stage-1 order), threshold and cut to ``top_k``; returns annotated copies."""
        _ = self.cross_encoder  # load before timing: stage2_ms is scoring time, not model loading
        with Stopwatch() as watch:
            candidates = select_candidates(nodes)
            truncated = self.count_truncated(query, candidates.texts) if candidates.texts else 0
            scores = self.score(query, candidates.texts)
        self._report(candidates, truncated)
        order = sorted(range(len(scores)), key=lambda index: -scores[index])
        if self.score_threshold is not None:
            order = [index for index in order if scores[index] >= self.score_threshold]
        info = {
            "stage2_ms": watch.ms,
            "pairs_scored": len(scores),
            "pairs_truncated": truncated,
            "duplicates_removed": len(candidates.duplicate_ids),
            "skipped_non_text": len(candidates.non_text_ids),
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
