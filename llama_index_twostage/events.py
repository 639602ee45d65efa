"""What each stage tells LlamaIndex's instrumentation, beside its spans.

Every step of a two-stage retrieval runs in a span of its own (``@dispatcher.span``): the retrieval, stage 1's dense
search, BM25 search and fusion, and stage 2's reranking. Each step also emits one event below, inside its span, with
the timings and counts that the result metadata carries, so a tracing tool (Arize Phoenix, Langfuse, an
OpenTelemetry exporter) shows what each stage did, not just how long it took.
"""

from __future__ import annotations

from llama_index.core.instrumentation.events import BaseEvent


class RecallSideEvent(BaseEvent):
    """One side of stage 1 answered: ``side`` (``dense`` or ``lexical``), how many candidates and in how long."""

    side: str
    candidates: int
    ms: float

    @classmethod
    def class_name(cls) -> str:
        return "RecallSideEvent"


class Stage1Event(BaseEvent):
    """Stage 1 handed its candidates on: ``mode`` (``dense``, ``hybrid``, ``lexical``), how many (at most
    ``recall_k``), ``stage1_ms``, and ``fallback`` when a hybrid query had no searchable terms."""

    mode: str
    candidates: int
    recall_k: int
    stage1_ms: float
    fallback: str | None = None

    @classmethod
    def class_name(cls) -> str:
        return "Stage1Event"


class Stage2Event(BaseEvent):
    """Stage 2 ranked the candidates: how many it read and returned, ``stage2_ms`` and the counts the results carry
    (``pairs_scored``, ``pairs_cached``, ``pairs_truncated``, ``duplicates_removed``, ...)."""

    candidates: int
    returned: int
    stage2_ms: float
    counts: dict[str, int]

    @classmethod
    def class_name(cls) -> str:
        return "Stage2Event"
