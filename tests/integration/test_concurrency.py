"""Many queries at once, as a web service sends them: from threads and from asyncio (32 at a time), with the
results of sequential runs, each model loaded once, and the event loop left free for other work."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from llama_index.core.llms import MockLLM
from llama_index.core.schema import QueryBundle

from llama_index_twostage.models import ModelPool, sentence_transformer_of
from llama_index_twostage.pipeline import TwoStagePipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CONCURRENCY = 32
SIDE_BY_SIDE_S = 4.0


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


def errors_side_by_side(count: Callable[[int], object], batch: Callable[[int], object]) -> list[str]:
    """Run ``count`` (tokenizing without padding) in two threads and ``batch`` (a padded batch through the model) in
    two others for :data:`SIDE_BY_SIDE_S` seconds, each call with a fresh number; what the calls raised."""
    deadline = time.monotonic() + SIDE_BY_SIDE_S
    fresh = itertools.count()

    def repeat(call: Callable[[int], object]) -> list[str]:
        errors = []
        while time.monotonic() < deadline:
            try:
                call(next(fresh))
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                errors.append(repr(error))
        return errors

    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(repeat, call) for call in (count, count, batch, batch)]
        return [error for run in runs for error in run.result()]


def varied_texts(scifact, seed: int, count: int = 4) -> list[str]:
    """``count`` SciFact texts cut to different lengths, tagged with ``seed`` so no cache has seen them."""
    texts = [document.text for document in scifact.corpus.values()]
    return [f"{seed} {texts[(seed + i) % len(texts)][: 40 + 60 * i]}" for i in range(count)]


def test_counting_a_reranker_window_beside_its_batches_breaks_nothing(settings_for, pipeline_for, scifact):
    """Truncation counts (no padding) and the model's batches (padded) at once, as concurrent queries run them: a
    tokenizer shared between them would un-pad a batch ("Unable to create tensor")."""
    scorer = pipeline_for(settings_for("memory")).reranker().scorer
    errors = errors_side_by_side(
        lambda seed: scorer.window.count_truncated(f"query {seed}", varied_texts(scifact, seed)),
        lambda seed: scorer.score(f"query {seed}", varied_texts(scifact, seed)),
    )
    assert errors == []


def test_query_truncation_checks_leave_the_bi_encoder_batches_padded(settings_for, pipeline_for, scifact):
    """The same race on the bi-encoder (a service that embeds documents while it answers queries), asserted on the
    state it races on, since its window is too narrow to hit reliably: a fast tokenizer's padding, set by each
    padded batch, must survive the query's truncation check (no padding)."""
    pipeline = pipeline_for(settings_for("memory"))
    pipeline.ingest(list(scifact.corpus.values())[:3])
    pipeline.embed_model.get_text_embedding_batch(varied_texts(scifact, 0))
    padding = sentence_transformer_of(pipeline.embed_model).tokenizer.backend_tokenizer.padding
    assert padding is not None
    query = "which trials measured the dose?"
    embedded = QueryBundle(query, embedding=pipeline.embed_model.get_query_embedding(query))  # checked, not embedded
    assert pipeline.retriever(recall_k=2).retrieve(embedded)
    assert sentence_transformer_of(pipeline.embed_model).tokenizer.backend_tokenizer.padding == padding


def test_components_built_per_request_count_with_one_copy_of_each_tokenizer(settings_for, pipeline_for):
    """A service that builds its query engine per request copies each model's tokenizer once (a copy costs about
    30 ms), and counts with that copy, never with the model's own."""
    pipeline = pipeline_for(settings_for("memory"))
    scorers = [pipeline.reranker().scorer for _ in range(2)]
    assert scorers[0].window is scorers[1].window
    assert scorers[0].window.tokenizer is not scorers[0].cross_encoder.tokenizer
    retrievers = [pipeline.retriever(stage1_mode="dense") for _ in range(2)]
    assert retrievers[0].query_tokenizer is retrievers[1].query_tokenizer is not None
    assert retrievers[0].query_tokenizer is not sentence_transformer_of(pipeline.embed_model).tokenizer
