"""The score cache: bounded LRU, keys that tell scorers and contents apart, thread safety, and no pair scored twice."""

from __future__ import annotations

import threading

import pytest
from llama_index.core.schema import NodeWithScore, TextNode
from support import RecordingScorer, fake_cross_encoder

from llama_index_twostage.nodes import stage_info
from llama_index_twostage.stage2 import CrossEncoderRerank, CrossEncoderScorer, ScoreCache
from llama_index_twostage.stage2.caches import LruCache, compute_through, content_hash, pair_key, pair_keys


class CountingScore:
    """A stand-in model: score = text length, and every text it is asked to score is recorded."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> list[float]:
        self.seen.extend(texts)
        return [float(len(text)) for text in texts]


def test_lru_evicts_the_least_recently_used_beyond_max_size():
    cache = LruCache(2)
    a, b, c = (pair_key("m", "q", text) for text in "abc")
    cache.put_many([(a, 1.0), (b, 2.0)])
    assert cache.get_many([a]) == [1.0]  # a is now the most recently used
    cache.put_many([(c, 3.0)])
    assert cache.get_many([a, b, c]) == [1.0, None, 3.0]
    assert cache.stats().size == 2


def test_stats_count_hits_and_misses():
    cache = LruCache(10)
    key = pair_key("m", "q", "t")
    cache.get_many([key])
    cache.put_many([(key, 0.5)])
    cache.get_many([key, key])
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size, stats.max_size) == (2, 1, 1, 10)


def test_max_size_must_be_positive():
    with pytest.raises(ValueError):
        LruCache(0)
    with pytest.raises(ValueError):
        ScoreCache(-1)


def test_key_holds_scorer_query_and_a_content_hash_not_the_text():
    key = pair_key(("model", "onnx", 256, False), "query", "some long candidate text")
    assert key == (("model", "onnx", 256, False), "query", content_hash("some long candidate text"))
    assert content_hash("a") != content_hash("b")


def test_scorer_key_separates_model_backend_window_activation_and_class_read():
    def scorer(name="m", backend="torch", window=256, normalize=False, batch_size=32, outputs=1, relevant_class=None):
        return CrossEncoderScorer(
            fake_cross_encoder(window, outputs),
            name=name,
            backend=backend,
            normalize=normalize,
            batch_size=batch_size,
            relevant_class=relevant_class,
        )

    base = scorer()
    variants = [scorer(name="other"), scorer(backend="onnx-int8"), scorer(window=128), scorer(normalize=True)]
    variants += [scorer(outputs=2), scorer(outputs=2, relevant_class=0)]
    assert len({base.cache_key, *(variant.cache_key for variant in variants)}) == 7
    assert scorer(batch_size=8).cache_key == base.cache_key  # batch size does not change a score


def score_through(cache, scorer, query, texts, model):
    return compute_through(cache, pair_keys(scorer, query, texts), texts, model)


def test_score_through_scores_only_misses_once_each_and_keeps_order():
    cache, model = LruCache(100), CountingScore()
    assert score_through(cache, "m", "q", ["aa", "b", "aa"], model) == ([2.0, 1.0, 2.0], 0)
    assert model.seen == ["aa", "b"]  # equal texts in one call are scored once
    assert score_through(cache, "m", "q", ["ccc", "b", "aa"], model) == ([3.0, 1.0, 2.0], 2)
    assert model.seen == ["aa", "b", "ccc"]
    assert score_through(cache, "m-int8", "q", ["b"], model)[1] == 0 and model.seen[-1] == "b"


def test_score_through_without_cache_scores_everything():
    model = CountingScore()
    assert score_through(None, "m", "q", ["a", "a"], model) == ([1.0, 1.0], 0)
    assert model.seen == ["a", "a"]


def test_concurrent_use_keeps_the_bound_and_the_counts():
    cache = LruCache(50)
    lookups_per_thread, threads = 200, 8

    def work(worker: int) -> None:
        for index in range(lookups_per_thread):
            key = pair_key("m", "q", f"{worker}-{index % 80}")
            if cache.get_many([key]) == [None]:
                cache.put_many([(key, float(index))])

    pool = [threading.Thread(target=work, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    stats = cache.stats()
    assert stats.size <= 50
    assert stats.hits + stats.misses == lookups_per_thread * threads


def nodes(texts: list[str]) -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=f"n{index}", text=text), score=0.5) for index, text in enumerate(texts)]


def test_a_repeated_query_scores_no_new_pairs():
    scorer = RecordingScorer()
    reranker = CrossEncoderRerank(scorer, top_k=2, score_cache=ScoreCache(100))
    candidates = nodes(["a", "bbb", "cc", "dddd"])
    first = reranker.postprocess_nodes(candidates, query_str="q")
    second = reranker.postprocess_nodes(candidates, query_str="q")
    assert [len(texts) for texts in scorer.calls] == [4]  # the second query never reached the model
    assert stage_info(first[0])["pairs_cached"] == 0
    assert stage_info(second[0])["pairs_cached"] == stage_info(second[0])["pairs_scored"] == 4
    assert [node.node.node_id for node in second] == [node.node.node_id for node in first] == ["n3", "n1"]


def test_without_a_cache_every_query_is_scored():
    scorer = RecordingScorer()
    reranker = CrossEncoderRerank(scorer, top_k=2)
    for _ in range(2):
        reranker.postprocess_nodes(nodes(["a", "bb"]), query_str="q")
    assert len(scorer.calls) == 2


def test_rerankers_given_one_cache_share_scores_and_others_do_not():
    shared = ScoreCache(100)
    scorer = RecordingScorer()
    CrossEncoderRerank(scorer, score_cache=shared).postprocess_nodes(nodes(["a", "bb"]), query_str="q")
    CrossEncoderRerank(scorer, score_cache=shared).postprocess_nodes(nodes(["a", "bb"]), query_str="q")
    assert len(scorer.calls) == 1
    CrossEncoderRerank(scorer, score_cache=ScoreCache(100)).postprocess_nodes(nodes(["a", "bb"]), query_str="q")
    assert len(scorer.calls) == 2
