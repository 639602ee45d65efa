"""Metrics checked against hand-computed values (arithmetic in the comments)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import pytest

from llama_index_twostage.evaluation.metrics import (
    evaluate_run,
    mrr_at_k,
    ndcg_at_k,
    per_query_metrics,
    recall_at_k,
    recall_curve,
    relevant_ranks,
)

Metric = Callable[[Sequence[str], Mapping[str, int], int], float]

LOG2_3 = math.log2(3)  # discount at rank 2; rank 3's log2(4) = 2 is written inline


def test_ndcg_graded_when_ideal_order_differs_from_run() -> None:
    relevance = {"a": 1, "b": 2, "c": 0}
    # run: a(rel 1) at rank 1, x (unjudged) at 2, b(rel 2) at 3
    # DCG  = (2^1-1)/log2(2) + 0 + (2^2-1)/log2(4) = 1 + 3/2 = 2.5
    # IDCG = grades sorted desc [2, 1, 0]: 3/log2(2) + 1/log2(3) = 3 + 0.63093 = 3.63093
    expected = 2.5 / (3 + 1 / LOG2_3)
    assert ndcg_at_k(["a", "x", "b"], relevance, 10) == pytest.approx(expected)
    assert expected == pytest.approx(0.688529, abs=1e-6)


def test_ndcg_perfect_ranking_is_one() -> None:
    assert ndcg_at_k(["b", "a", "c"], {"a": 1, "b": 2, "c": 0}, 10) == pytest.approx(1.0)


def test_ndcg_cutoff_drops_docs_below_k_but_ideal_uses_top_k_grades() -> None:
    relevance = {"a": 1, "b": 1, "c": 1}
    # k=2, run [x, a, b]: DCG = 0 + 1/log2(3); IDCG@2 = 1 + 1/log2(3)
    expected = (1 / LOG2_3) / (1 + 1 / LOG2_3)
    assert ndcg_at_k(["x", "a", "b"], relevance, 2) == pytest.approx(expected)


def test_ndcg_unretrieved_relevant_doc_lowers_score() -> None:
    # only "a" retrieved: DCG = 1; IDCG = 1 + 1/log2(3) -> 1/1.63093 = 0.61315
    assert ndcg_at_k(["a"], {"a": 1, "b": 1}, 10) == pytest.approx(1 / (1 + 1 / LOG2_3))


def test_ndcg_empty_or_non_positive_relevance_is_zero() -> None:
    assert ndcg_at_k(["a"], {}, 10) == 0.0
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0


def test_mrr_first_relevant_at_rank_three() -> None:
    relevance = {"c": 1, "d": 2}
    # a, b non-relevant; c is the first relevant at rank 3 -> 1/3
    assert mrr_at_k(["a", "b", "c", "d"], relevance, 10) == pytest.approx(1 / 3)
    # k=2 cuts it off -> 0
    assert mrr_at_k(["a", "b", "c", "d"], relevance, 2) == 0.0


def test_mrr_ignores_zero_grade_judgments() -> None:
    # "a" is judged but grade 0, so the first relevant is "b" at rank 2 -> 1/2
    assert mrr_at_k(["a", "b"], {"a": 0, "b": 1}, 10) == pytest.approx(0.5)


def test_recall_with_k_smaller_than_number_relevant() -> None:
    relevance = {"a": 1, "b": 1, "c": 1, "d": 0}
    # top 2 = [a, d]: 1 of 3 relevant found -> 1/3 (d has grade 0, not relevant)
    assert recall_at_k(["a", "d", "b", "c"], relevance, 2) == pytest.approx(1 / 3)
    # top 4 holds a, b, c -> 3/3
    assert recall_at_k(["a", "d", "b", "c"], relevance, 4) == pytest.approx(1.0)


def test_recall_without_relevant_docs_is_zero() -> None:
    assert recall_at_k(["a"], {}, 10) == 0.0
    assert recall_at_k(["a"], {"a": 0}, 10) == 0.0


def test_duplicates_count_once_at_first_occurrence() -> None:
    relevance = {"a": 1, "b": 1}
    ranked = ["a", "a", "b"]
    # de-duplicated ranking is [a, b]: perfect nDCG, recall@2 = 2/2, b at rank 2
    assert ndcg_at_k(ranked, relevance, 2) == pytest.approx(1.0)
    assert recall_at_k(ranked, relevance, 2) == pytest.approx(1.0)
    assert relevant_ranks(ranked, relevance) == {"a": 1, "b": 2}
    # duplicate relevant doc does not earn gain twice: [a, a] -> DCG 1, IDCG 1 + 1/log2(3)
    assert ndcg_at_k(["a", "a"], relevance, 10) == pytest.approx(1 / (1 + 1 / LOG2_3))


def test_relevant_ranks_reports_missing_as_none() -> None:
    ranks = relevant_ranks(["x", "b", "y"], {"a": 1, "b": 2, "z": 0})
    assert ranks == {"a": None, "b": 2}


@pytest.mark.parametrize("metric", [ndcg_at_k, mrr_at_k, recall_at_k])
def test_non_positive_k_is_rejected(metric: Metric) -> None:
    with pytest.raises(ValueError, match="k must be"):
        metric(["a"], {}, 0)


def test_evaluate_run_means_over_judged_queries_only() -> None:
    qrels = {
        "q1": {"a": 1, "b": 1},  # scored
        "q2": {"c": 1},  # missing from run -> all zeros
        "q3": {"d": 0},  # no relevant doc -> excluded from the mean
    }
    run = {"q1": ["b", "x", "a"], "q3": ["d"], "q_extra": ["a"]}  # q_extra has no qrels: ignored
    # q1: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) = 1.63093 -> 0.91972
    #     MRR = 1/1; recall@1 = 1/2; recall@3 = 2/2
    # q2: 0 everywhere.  Means over {q1, q2} = q1 / 2.
    q1_ndcg = 1.5 / (1 + 1 / LOG2_3)
    result = evaluate_run(run, qrels, recall_ks=(1, 3))
    assert result == pytest.approx({"ndcg@10": q1_ndcg / 2, "mrr@10": 0.5, "recall@1": 0.25, "recall@3": 0.5})
    assert list(result) == ["ndcg@10", "mrr@10", "recall@1", "recall@3"]


def test_per_query_metrics_keys_and_missing_query() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    per_query = per_query_metrics({"q1": ["x", "a"]}, qrels, recall_ks=(100,))
    # q1: a at rank 2 -> nDCG = (1/log2(3)) / 1, MRR = 1/2, recall@100 = 1
    assert per_query["q1"] == pytest.approx({"ndcg@10": 1 / LOG2_3, "mrr@10": 0.5, "recall@100": 1.0})
    assert per_query["q2"] == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@100": 0.0}


def test_evaluate_run_with_no_judged_queries_is_all_zero() -> None:
    assert evaluate_run({"q": ["a"]}, {"q": {}}, recall_ks=(5,)) == {
        "ndcg@10": 0.0,
        "mrr@10": 0.0,
        "recall@5": 0.0,
    }


def test_recall_curve_by_hand() -> None:
    """q: a@1 and b@3 of three relevant; r: its only relevant doc at 1; u: none retrieved; s: nothing relevant
    (excluded). Recall@k averaged over q, r and u."""
    run = {"q": ["a", "x", "b"], "r": ["z"], "u": ["x"]}
    qrels = {"q": {"a": 1, "b": 2, "c": 1}, "r": {"z": 1}, "u": {"w": 1}, "s": {"a": 0}}
    curve = recall_curve(run, qrels, 4)
    assert curve == pytest.approx([(1 / 3 + 1) / 3, (1 / 3 + 1) / 3, (2 / 3 + 1) / 3, (2 / 3 + 1) / 3])
    judged = ["q", "r", "u"]
    for k in range(1, 5):
        assert curve[k - 1] == pytest.approx(sum(recall_at_k(run[q], qrels[q], k) for q in judged) / 3)
