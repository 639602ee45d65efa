"""Both stages traced through LlamaIndex's instrumentation: one span tree per query, each step in its own span with
the event that carries its timings and counts, sync and async, and nothing left open under concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler

from llama_index_twostage import stage_info
from llama_index_twostage.events import RecallSideEvent, Stage1Event, Stage2Event

pytestmark = pytest.mark.integration

# What one hybrid two-stage query opens, child -> parent (span names are "<class>.<method>").
TREE = {  # async: arecall, alexical_candidates, arerank
    "HybridRecallRetriever.retrieve": "TwoStageRetriever.retrieve",
    "ChromaRecallRetriever.recall": "HybridRecallRetriever.retrieve",
    "HybridRecallRetriever.lexical_candidates": "HybridRecallRetriever.retrieve",
    "HybridRecallRetriever.fuse": "HybridRecallRetriever.retrieve",
    "CrossEncoderRerank.rerank": "TwoStageRetriever.retrieve",
}
ASYNC = {
    "TwoStageRetriever.retrieve": "TwoStageRetriever.aretrieve",
    "HybridRecallRetriever.retrieve": "HybridRecallRetriever.aretrieve",
    "ChromaRecallRetriever.recall": "ChromaRecallRetriever.arecall",
    "HybridRecallRetriever.lexical_candidates": "HybridRecallRetriever.alexical_candidates",
    "CrossEncoderRerank.rerank": "CrossEncoderRerank.arerank",
}


class Events(BaseEventHandler):
    """Every event the dispatcher sends, in order."""

    seen: list[BaseEvent] = []

    @classmethod
    def class_name(cls) -> str:
        return "Events"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.seen.append(event)


@dataclass
class Traced:
    spans: SimpleSpanHandler
    events: Events


@pytest.fixture
def traced() -> Iterator[Traced]:
    """LlamaIndex's span handler and an event handler on the root dispatcher, for this test only."""
    root = get_dispatcher()
    handlers = Traced(SimpleSpanHandler(), Events(seen=[]))
    root.add_span_handler(handlers.spans)
    root.add_event_handler(handlers.events)
    yield handlers
    root.span_handlers.remove(handlers.spans)
    root.event_handlers.remove(handlers.events)


def name(span_id: str) -> str:
    return span_id.split("-")[0]


def trees(handler: SimpleSpanHandler) -> dict[str, dict[str, str]]:
    """Root span id -> {span name: span id} of every span under it; each name appears once per tree."""
    spans = {span.id_: span for span in handler.completed_spans}
    assert not handler.dropped_spans and not handler.open_spans

    def root_of(span_id: str) -> str:
        while spans[span_id].parent_id is not None:
            span_id = spans[span_id].parent_id
        return span_id

    found: dict[str, dict[str, str]] = {}
    for span_id in spans:
        members = found.setdefault(root_of(span_id), {})
        assert name(span_id) not in members, f"{name(span_id)} twice in one trace"
        members[name(span_id)] = span_id
    return found


def check_tree(members: dict[str, str], handler: SimpleSpanHandler, asynchronous: bool) -> None:
    """Each of our steps sits under its parent step (LlamaIndex's own spans, e.g. ``_retrieve`` or the query
    embedding, may lie between them)."""
    spans = {span.id_: span for span in handler.completed_spans}
    step = (lambda span: ASYNC.get(span, span)) if asynchronous else (lambda span: span)
    expected = {step(child): step(parent) for child, parent in TREE.items()}
    steps = {*expected, step("TwoStageRetriever.retrieve")}
    assert steps <= set(members)
    for child, parent in expected.items():
        ancestor = spans[members[child]].parent_id
        while name(ancestor) not in steps:
            ancestor = spans[ancestor].parent_id
        assert ancestor == members[parent], child


def in_span(events: list[BaseEvent], kind: type[BaseEvent], span_id: str) -> list[Any]:
    return [event for event in events if isinstance(event, kind) and event.span_id == span_id]


def test_a_query_is_one_trace_with_both_stages_and_their_numbers(ingested, some_queries, traced: Traced) -> None:
    results = ingested.pipeline.two_stage_retriever().retrieve(some_queries[0])
    (members,) = trees(traced.spans).values()
    check_tree(members, traced.spans, asynchronous=False)
    info = stage_info(results[0])
    events = traced.events.seen
    (dense,) = in_span(events, RecallSideEvent, members["ChromaRecallRetriever.recall"])
    (lexical,) = in_span(events, RecallSideEvent, members["HybridRecallRetriever.lexical_candidates"])
    assert (dense.side, dense.candidates, lexical.side, lexical.candidates) == ("dense", 20, "lexical", 20)
    (stage1,) = in_span(events, Stage1Event, members["HybridRecallRetriever.fuse"])
    assert (stage1.mode, stage1.candidates, stage1.stage1_ms) == ("hybrid", 20, info["stage1_ms"])
    (stage2,) = in_span(events, Stage2Event, members["CrossEncoderRerank.rerank"])
    assert (stage2.candidates, stage2.returned, stage2.stage2_ms) == (20, 5, info["stage2_ms"])
    # pairs_cached counts the scored pairs the score cache answered (all of them when an earlier test asked the same)
    assert stage2.counts["pairs_scored"] == 20 and 0 <= stage2.counts["pairs_cached"] <= 20
    assert stage2.counts["pairs_scored"] == info["pairs_scored"]


async def test_32_concurrent_queries_are_32_whole_traces_and_leave_no_open_span(
    ingested, some_queries, traced: Traced
) -> None:
    retriever = ingested.pipeline.two_stage_retriever()
    for query in some_queries:  # the score cache then answers stage 2: 32 queries cost what 4 do
        await retriever.aretrieve(query)
    traced.spans.completed_spans.clear()
    traced.events.seen.clear()
    queries = [some_queries[index % len(some_queries)] for index in range(32)]
    results = await asyncio.gather(*(retriever.aretrieve(query) for query in queries))
    found = trees(traced.spans)
    assert len(found) == 32
    for members in found.values():
        check_tree(members, traced.spans, asynchronous=True)
    # each query's numbers are in its own trace: the stage-2 event of a trace matches one result list's metadata
    stage2 = {event.span_id: event.stage2_ms for event in traced.events.seen if isinstance(event, Stage2Event)}
    assert sorted(stage2[members["CrossEncoderRerank.arerank"]] for members in found.values()) == sorted(
        stage_info(nodes[0])["stage2_ms"] for nodes in results
    )
