"""Many queries at once, as a web service sends them: from threads and from asyncio (32 at a time), with the
results of sequential runs, each model loaded once, and the event loop left free for other work."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from llama_index.core.llms import MockLLM

from llama_index_twostage.models import ModelPool
from llama_index_twostage.pipeline import TwoStagePipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CONCURRENCY = 32


def ranking(nodes) -> list[tuple[str, float]]:
    return [(scored.node.node_id, round(float(scored.score), 5)) for scored in nodes]


@pytest.fixture(scope="module")
def queries(some_queries) -> list[str]:
    """CONCURRENCY queries: the few distinct ones repeated, so each has a sequential reference."""
    return [some_queries[i % len(some_queries)] for i in range(CONCURRENCY)]


@pytest.fixture(scope="module")
def small_on_server(server_pipeline, pipeline_for) -> TwoStagePipeline:
    """The session's pipeline on `chroma run`, with fewer candidates (8) and results (3)."""
    small = server_pipeline.settings.model_copy(update={"recall_k": 8, "top_k": 3})
    return pipeline_for(small, store=server_pipeline.store)


def test_threads_get_the_sequential_results(ingested, pipeline_for, queries):
    retriever = pipeline_for(ingested.settings.model_copy(update={"recall_k": 8, "top_k": 3})).two_stage_retriever()
    expected = {query: ranking(retriever.retrieve(query)) for query in set(queries)}
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(retriever.retrieve, queries))
    assert [ranking(result) for result in results] == [expected[query] for query in queries]


async def test_concurrent_aretrieve_and_aquery_keep_the_loop_free(small_on_server, queries):
    stage1 = small_on_server.retriever()
    engine = small_on_server.query_engine(llm=MockLLM())
    expected_stage1 = {query: ranking(stage1.retrieve(query)) for query in set(queries)}
    expected_final = {query: ranking(engine.query(query).source_nodes) for query in set(queries)}
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        retrieved, answered = await asyncio.gather(
            asyncio.gather(*(stage1.aretrieve(query) for query in queries)),
            asyncio.gather(*(engine.aquery(query) for query in queries)),
        )
    finally:
        done.set()
        await ticking
    assert [ranking(nodes) for nodes in retrieved] == [expected_stage1[query] for query in queries]
    assert [ranking(response.source_nodes) for response in answered] == [expected_final[query] for query in queries]
    assert ticks >= 5, "the event loop was starved while the queries ran"


def test_embedding_model_loads_once_under_concurrent_first_use(settings_for, caplog):
    shared = ModelPool()  # a new pool: nothing loaded yet; every pipeline below shares it
    pipelines = [TwoStagePipeline(settings_for("memory"), models=shared) for _ in range(CONCURRENCY)]
    with caplog.at_level("INFO", logger="llama_index_twostage.embed_backends"), ThreadPoolExecutor(CONCURRENCY) as pool:
        models = list(pool.map(lambda pipeline: pipeline.embed_model, pipelines))
    for pipeline in pipelines:
        pipeline.close()
    shared.close()
    loads = [record for record in caplog.records if record.getMessage().startswith("loading embedding model")]
    assert len(loads) == 1
    assert all(model is models[0] for model in models)
