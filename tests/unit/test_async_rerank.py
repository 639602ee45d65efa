"""The reranker's async path: the same ranking as the sync one, a scorer's own ``ascore`` awaited on the event loop,
local scorers in worker threads, and a cascade that mixes the two."""

from __future__ import annotations

import asyncio
import threading

from llama_index.core.schema import NodeWithScore, TextNode
from support import RecordingScorer

from llama_index_twostage.stage2 import CrossEncoderRerank, ScoreCache
from llama_index_twostage.stage2.plan import ScoreRequest, arun, run

TEXTS = ["a", "bbbb", "cc", "dddddd", "eee", "bbbb", "ffff"]


def nodes() -> list[NodeWithScore]:
    ids = ["n0", "n1", "n2", "n3", "n4", "n1", "n5"]  # n1 twice: de-duplicated
    return [NodeWithScore(node=TextNode(id_=i, text=t), score=0.5) for i, t in zip(ids, TEXTS)]


class ThreadRecordingScorer(RecordingScorer):
    """A local scorer double that notes the thread of each call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[int] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.threads.append(threading.get_ident())
        return super().score(query, texts)


class AwaitedScorer(ThreadRecordingScorer):
    """A scorer with ``ascore`` (as a rerank server has); its ``score`` must not be called on the async path."""

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        await asyncio.sleep(0)
        return ThreadRecordingScorer.score(self, query, texts)

    def score(self, query: str, texts: list[str]) -> list[float]:
        raise AssertionError("the async path called score() of a scorer that has ascore()")


def ranked(results: list[NodeWithScore]) -> list[tuple[str, float, dict]]:
    """Ids, scores and stage metadata, less the timing."""
    return [
        (r.node.node_id, r.score, {k: v for k, v in r.metadata["twostage"].items() if k != "stage2_ms"})
        for r in results
    ]


async def test_async_ranking_equals_sync_ranking_with_cascade_threshold_and_cache():
    def reranker() -> CrossEncoderRerank:
        return CrossEncoderRerank(
            RecordingScorer(len, name="full"),
            top_k=2,
            score_threshold=2,
            cascade_scorer=RecordingScorer(lambda text: -len(text), name="cheap"),
            cascade_k=3,
            score_cache=ScoreCache(100),
        )

    sync, asynchronous = reranker(), reranker()
    for _ in range(2):  # the second round is answered from the cache
        expected = ranked(sync.postprocess_nodes(nodes(), query_str="q"))
        assert ranked(await asynchronous.apostprocess_nodes(nodes(), query_str="q")) == expected
    assert expected[0][2]["pairs_cached"] == 3 and expected[0][2]["cascade_pairs_cached"] == 6


async def test_a_scorer_with_ascore_is_awaited_on_the_loop_and_a_local_one_runs_in_a_thread():
    server, local = AwaitedScorer(name="server"), ThreadRecordingScorer(lambda text: -len(text), name="local")
    reranker = CrossEncoderRerank(server, top_k=2, cascade_scorer=local, cascade_k=3)
    results = await reranker.apostprocess_nodes(nodes(), query_str="q")
    loop_thread = threading.get_ident()
    assert server.threads == [loop_thread] and local.threads and loop_thread not in local.threads
    assert server.pairs == ["a", "cc", "eee"]  # the server reads the local scorer's shortlist only
    assert [r.node.node_id for r in results] == ["n4", "n2"]
    assert results[0].metadata["twostage"]["cascade_pairs_scored"] == 6


async def test_plans_run_alike_in_both_drivers():
    scorer = RecordingScorer()

    def plan():
        first = yield ScoreRequest(scorer, "q", ["a", "bb"])
        second = yield ScoreRequest(scorer, "q", ["ccc"])
        return first + second

    assert run(plan()) == await arun(plan()) == [1.0, 2.0, 3.0]
