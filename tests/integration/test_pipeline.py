"""The factory and the LlamaIndex integration points: query engine, TwoStageRetriever, instrumentation, callbacks."""

from __future__ import annotations

import pytest
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM

from llama_index_twostage.nodes import model_text, stage_info
from llama_index_twostage.pipeline import (
    TwoStagePipeline,
    TwoStageQueryEngine,
    build_query_engine,
    build_retriever,
    build_two_stage_retriever,
)
from llama_index_twostage.stage1 import ChromaRecallRetriever

pytestmark = pytest.mark.integration

STAGE_KEYS = {"stage1_rank", "stage1_score", "stage1_ms", "rerank_score", "final_rank", "stage2_ms", "pairs_scored"}


def assert_final(nodes, top_k: int) -> None:
    assert len(nodes) == top_k
    assert [stage_info(n)["final_rank"] for n in nodes] == list(range(1, top_k + 1))
    for node in nodes:
        assert STAGE_KEYS <= stage_info(node).keys()
        assert node.score == stage_info(node)["rerank_score"]


@pytest.fixture(scope="module")
def engine(ingested):
    return build_query_engine(ingested.settings, llm=MockLLM())


def test_query_engine_query(engine, ingested, some_queries):
    response = engine.query(some_queries[0])
    assert_final(response.source_nodes, ingested.settings.top_k)
    # MockLLM echoes the prompt: the synthesizer ran on the reranked nodes, the query included.
    answer = str(response)
    assert some_queries[0] in answer
    assert all(model_text(node.node).split("\n")[-1][:60] in answer for node in response.source_nodes)


async def test_query_engine_aquery(engine, ingested, some_queries):
    response = await engine.aquery(some_queries[0])
    assert_final(response.source_nodes, ingested.settings.top_k)
    sync = engine.query(some_queries[0])
    assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in sync.source_nodes]


async def test_two_stage_sync_and_async_agree(ingested, some_queries):
    retriever = build_two_stage_retriever(ingested.settings)
    sync = retriever.retrieve(some_queries[1])
    asynchronous = await retriever.aretrieve(some_queries[1])
    assert_final(sync, ingested.settings.top_k)
    assert [n.node.node_id for n in sync] == [n.node.node_id for n in asynchronous]
    assert [n.score for n in sync] == pytest.approx([n.score for n in asynchronous], abs=1e-6)
    assert [stage_info(n)["stage1_rank"] for n in sync] == [stage_info(n)["stage1_rank"] for n in asynchronous]


class Recorder(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event, **kwargs) -> None:
        self.events.append(event)


@pytest.fixture
def recorder():
    handler = Recorder(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def test_rerank_events_reach_instrumentation(recorder, ingested, some_queries):
    candidates = ingested.pipeline.retriever(recall_k=8).retrieve(some_queries[2])
    results = ingested.pipeline.reranker().postprocess_nodes(candidates, query_str=some_queries[2])
    starts = [e for e in recorder.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in recorder.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == len(ends) == 1
    assert starts[0].query.query_str == some_queries[2]
    assert starts[0].top_n == ingested.settings.top_k
    assert starts[0].model_name == ingested.settings.rerank_model
    assert len(starts[0].nodes) == 8
    assert [n.node.node_id for n in ends[0].nodes] == [n.node.node_id for n in results]


def test_reranking_callback_event(ingested, some_queries):
    debug = LlamaDebugHandler()
    reranker = ingested.pipeline.reranker()
    reranker.callback_manager = CallbackManager([debug])
    candidates = ingested.pipeline.retriever(recall_k=8).retrieve(some_queries[3])
    results = reranker.postprocess_nodes(candidates, query_str=some_queries[3])
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    start, end = pairs[0]
    assert start.payload[EventPayload.QUERY_STR] == some_queries[3]
    assert start.payload[EventPayload.MODEL_NAME] == ingested.settings.rerank_model
    assert start.payload[EventPayload.TOP_K] == ingested.settings.top_k
    assert [n.node.node_id for n in end.payload[EventPayload.NODES]] == [n.node.node_id for n in results]


def test_pipeline_shares_its_objects_and_close_releases_the_store(ingested, models, some_queries):
    with TwoStagePipeline(ingested.settings, models=models) as pipeline:
        retriever, reranker = pipeline.retriever(), pipeline.reranker()
        assert retriever.store is pipeline.store and retriever.embed_model is pipeline.embed_model
        assert reranker.score_cache is pipeline.score_cache is pipeline.reranker().score_cache
        other = TwoStagePipeline(ingested.settings, models=models, store=pipeline.store, lexical=pipeline.lexical)
        assert pipeline.embed_model is other.embed_model  # the caller's pool: loaded once for both
        first = pipeline.two_stage_retriever().retrieve(some_queries[0])
    assert not pipeline.store.is_open  # released
    assert len(models) > 0  # a pool the pipeline did not create is not closed by it
    with TwoStagePipeline(ingested.settings, models=models) as again:
        assert [n.node.node_id for n in again.two_stage_retriever().retrieve(some_queries[0])] == [
            n.node.node_id for n in first
        ]


def test_what_a_build_function_returns_keeps_its_pipeline_and_closes_it(ingested, some_queries):
    with build_two_stage_retriever(ingested.settings) as retriever:
        store = retriever.recall.store
        assert_final(retriever.retrieve(some_queries[0]), ingested.settings.top_k)
        assert store.is_open
    assert not store.is_open  # the with block closed the pipeline nothing else held
    engine = build_query_engine(ingested.settings, llm=MockLLM())
    assert isinstance(engine, TwoStageQueryEngine)
    assert_final(engine.query(some_queries[0]).source_nodes, ingested.settings.top_k)
    engine_store = engine.retriever.store
    engine.close()
    assert not engine_store.is_open
    dense = build_retriever(ingested.settings.replace(stage1_mode="dense"))
    assert isinstance(dense, ChromaRecallRetriever) and dense.retrieve(some_queries[0])
    dense.close()
    assert not dense.store.is_open


def test_a_component_asked_of_a_pipeline_owns_nothing_and_describe_loads_no_model(ingested, some_queries):
    with TwoStagePipeline(ingested.settings) as pipeline:
        described = pipeline.describe()
        assert len(pipeline.models) == 0  # no model loaded, no auto calibration run, to describe
        assert described["nodes"] == str(pipeline.store.open_collection().count())
        assert described["stage 1"].startswith("hybrid: bi-encoder + BM25 (english)")
        assert described["rerank backend"].startswith(ingested.settings.rerank_backend)
        retriever = pipeline.two_stage_retriever()
        retriever.retrieve(some_queries[0])
        retriever.close()
        assert pipeline.store.is_open and retriever.retrieve(some_queries[0])  # the pipeline's, still open
