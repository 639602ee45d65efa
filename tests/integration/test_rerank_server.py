"""Stage 2 on a real rerank server (Infinity, serving the test reranker): the same scores as the local model, the same
results through the pipeline, concurrent queries, a server killed mid-query and restarted, a replica killed mid-query
while the other serves, and refused keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.llms import MockLLM
from pydantic import SecretStr
from servers import LocalInfinityServer
from support import INFINITY, INFINITY_KEY
from typer.testing import CliRunner

from llama_index_twostage import RerankAuthenticationError, RerankServerError
from llama_index_twostage.cli import app
from llama_index_twostage.retry import RetryPolicy
from llama_index_twostage.stage2 import CrossEncoderScorer, HttpRerankScorer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CONCURRENCY = 32
TOLERANCE = 1e-4


def server_options(server, **overrides):
    """Settings that put stage 2 on ``server``."""
    return {
        "rerank_backend": "http",
        "rerank_url": server.rerank_url,
        "rerank_model": "reranker",
        "rerank_api_key": SecretStr(INFINITY_KEY),
        **overrides,
    }


@pytest.fixture(scope="module")
def reranked_by_server(infinity_server, ingested, pipeline_for):
    """The embedded SciFact subset, reranked by the server (score cache off: every pair goes to the server)."""
    return pipeline_for(ingested.settings.model_copy(update=server_options(infinity_server, score_cache_size=0)))


@pytest.fixture(scope="module")
def queries(some_queries) -> list[str]:
    """Two queries: the server reads about two pairs a second on 2 busy cores."""
    return some_queries[:2]


@pytest.fixture(scope="module")
def candidates(ingested, queries) -> dict[str, list[str]]:
    """Each query's stage-1 candidates, as the cross-encoder reads them."""
    retriever = ingested.pipeline.retriever()
    template = ingested.pipeline.reranker().template
    return {query: [template.document(n.node) for n in retriever.retrieve(query)] for query in queries}


def scorer_on(server, **options) -> HttpRerankScorer:
    return HttpRerankScorer(server.rerank_url, model="reranker", api_key=SecretStr(INFINITY_KEY), **options)


def test_server_scores_equal_the_local_cross_encoder(infinity_server, candidates, rerank_model_dir, models):
    local = CrossEncoderScorer.load(rerank_model_dir, backend="torch", pool=models).cross_encoder
    scorer = scorer_on(infinity_server)
    try:
        for (query, texts), path in zip(candidates.items(), ["sync", "async"]):
            expected = local.predict([(query, text) for text in texts], show_progress_bar=False)
            got = scorer.score(query, texts) if path == "sync" else asyncio.run(scorer.ascore(query, texts))
            assert np.abs(np.array(got) - expected).max() < TOLERANCE
    finally:
        scorer.close()


def test_pipeline_on_the_server_returns_the_local_top_k(reranked_by_server, ingested, queries, same_ranking):
    local, remote = ingested.pipeline.two_stage_retriever(), reranked_by_server.two_stage_retriever()
    for query in queries:
        expected, got = local.retrieve(query), remote.retrieve(query)
        scores = {r.node.node_id: r.score for r in expected}
        same_ranking([r.node.node_id for r in got], [r.node.node_id for r in expected], scores, TOLERANCE)
        info = got[0].metadata["twostage"]
        assert info["rerank_backend"] == "http" and info["pairs_scored"] == 20 and "pairs_truncated" not in info


def ranking(nodes) -> list[tuple[str, float]]:
    return [(scored.node.node_id, float(scored.score)) for scored in nodes]


def assert_close(got: list[list[tuple[str, float]]], expected: list[list[tuple[str, float]]]) -> None:
    """Same ids in the same order, scores within TOLERANCE (the server batches requests together)."""
    assert [[node_id for node_id, _ in run] for run in got] == [[node_id for node_id, _ in run] for run in expected]
    assert np.allclose([s for run in got for _, s in run], [s for run in expected for _, s in run], atol=TOLERANCE)


async def test_concurrent_aretrieve_and_aquery_equal_sequential_runs(reranked_by_server, some_queries):
    """CONCURRENCY calls at once, half aretrieve and half aquery, over the few queries (3 candidates each)."""
    small = reranked_by_server.settings.model_copy(update={"recall_k": 3, "top_k": 2})
    pipeline = type(reranked_by_server)(small, models=reranked_by_server.models, store=reranked_by_server.store)
    asked = [some_queries[i % len(some_queries)] for i in range(CONCURRENCY // 2)]
    retriever, engine = pipeline.two_stage_retriever(), pipeline.query_engine(llm=MockLLM())
    expected = {query: ranking(await retriever.aretrieve(query)) for query in set(asked)}
    retrieved, answered = await asyncio.gather(
        asyncio.gather(*(retriever.aretrieve(query) for query in asked)),
        asyncio.gather(*(engine.aquery(query) for query in asked)),
    )
    assert_close([ranking(nodes) for nodes in retrieved], [expected[query] for query in asked])
    assert_close([ranking(response.source_nodes) for response in answered], [expected[query] for query in asked])


async def test_a_server_killed_mid_query_is_named_then_served_again_after_a_restart(infinity_server, candidates):
    query, texts = next(iter(candidates.items()))
    scorer = scorer_on(infinity_server, timeout_s=5.0, retry=RetryPolicy(retries=1, backoff_s=0.1), max_documents=4)
    retries = scorer.retry.retries
    bound = (retries + 1) * 3 * scorer.timeout_s + retries * scorer.timeout_s  # 3 phases per attempt
    try:
        known = infinity_server.clients()
        in_flight = asyncio.create_task(scorer.ascore(query, texts))
        await asyncio.to_thread(infinity_server.wait_for_a_new_client, known)  # the requests are on their way
        await asyncio.to_thread(infinity_server.kill)
        with pytest.raises(RerankServerError) as raised:
            await asyncio.wait_for(in_flight, bound)  # an error, never a hang
        message = str(raised.value)
        assert infinity_server.rerank_url in message and "did not answer after 2 attempts" in message
    finally:
        await asyncio.to_thread(infinity_server.start, 300)
    assert len(await scorer.ascore(query, texts[:2])) == 2 and len(scorer.score(query, texts[:2])) == 2
    await scorer.aclose()


@pytest.mark.parametrize("key", [None, "sk-wrong-key-123"], ids=["no key", "wrong key"])
def test_a_refused_key_is_a_clear_error_that_never_shows_it(infinity_server, key):
    scorer = HttpRerankScorer(
        infinity_server.rerank_url,
        model="reranker",
        api_key=SecretStr(key) if key else None,
        retry=RetryPolicy(retries=0),
    )
    try:
        with pytest.raises(RerankAuthenticationError, match="refused the credentials \\(HTTP 401\\)") as raised:
            scorer.score("vitamin D", ["Vitamin D and fractures."])
    finally:
        scorer.close()
    assert infinity_server.rerank_url in str(raised.value) and (key is None or key not in str(raised.value))


def test_info_names_the_server_and_never_the_key(infinity_server, ingested, twostage_env):
    settings = ingested.settings
    twostage_env(
        persist_dir=settings.persist_dir,
        collection=settings.collection,
        embed_model=settings.embed_model,
        **server_options(infinity_server),
    )
    result = CliRunner().invoke(app, ["info"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"rerank backend:  http (cohere API at {infinity_server.rerank_url})" in result.output
    assert INFINITY_KEY not in result.output


@pytest.fixture(scope="module")
def second_infinity_server(tmp_path_factory, rerank_model_dir) -> Iterator[LocalInfinityServer]:
    """A replica of ``infinity_server`` (same model, same key), for a test that kills it."""
    server = LocalInfinityServer(
        INFINITY, Path(rerank_model_dir), tmp_path_factory.mktemp("replica"), api_key=INFINITY_KEY
    )
    server.start(300)
    try:
        yield server
    finally:
        server.stop()


def test_a_replica_killed_mid_query_leaves_the_results_unchanged(infinity_server, second_infinity_server, candidates):
    query, texts = next(iter(candidates.items()))
    texts = texts[:8]
    reference = scorer_on(infinity_server).score(query, texts)
    replicas = [second_infinity_server.rerank_url, infinity_server.rerank_url]
    scorer = HttpRerankScorer(
        replicas, model="reranker", api_key=SecretStr(INFINITY_KEY), timeout_s=30.0, max_documents=2, cooldown_s=60
    )
    try:
        with ThreadPoolExecutor(1) as caller:
            known = second_infinity_server.clients()
            in_flight = caller.submit(scorer.score, query, texts)  # the sync path: 4 requests across 2 replicas
            second_infinity_server.wait_for_a_new_client(known)  # its requests are on their way
            second_infinity_server.kill()
            scores = in_flight.result(timeout=300)
        np.testing.assert_allclose(scores, reference, atol=TOLERANCE)
        assert scorer.score(query, texts[:2]) == pytest.approx(reference[:2], abs=TOLERANCE)  # the survivor serves
    finally:
        scorer.close()
