"""Sweep, knee, diagnosis and report logic on hand-made candidates and scores (no models, no Chroma).

Two queries, hand-computed:

- ``a``: stage 1 ranks d1 d2 d3 d4, rerank scores .1 .9 .5 .2, relevant d2 (stage-1 rank 2, final rank 1).
- ``b``: stage 1 ranks d5 d6 d7 d8, scores .8 .3 .3 .9, relevant d7 (stage-1 rank 3; the tie with d6 keeps stage-1
  order, so final rank 4) and d9 (never retrieved).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.evaluation.artifacts import write_report
from llama_index_twostage.evaluation.diagnosis import HIT, LOST, RERANKER_MISS, diagnose, summarize
from llama_index_twostage.evaluation.report import build_report, format_table, knee
from llama_index_twostage.evaluation.sweep import parse_sweep, sweep_points
from llama_index_twostage.evaluation.traces import QueryTrace

QRELS = {"a": {"d2": 1}, "b": {"d7": 1, "d9": 1}}
# The rankings are what the reranker returns for the scores above (best first, ties in stage-1 order).
TRACES = [
    QueryTrace(
        "a",
        ["d1", "d2", "d3", "d4"],
        {2: ["d2", "d1"], 4: ["d2", "d3", "d4", "d1"]},
        {2: 2, 4: 4},
        10.0,
        {2: 4.0, 4: 9.0},
    ),
    QueryTrace(
        "b",
        ["d5", "d6", "d7", "d8"],
        {2: ["d5", "d6"], 4: ["d8", "d5", "d6", "d7"]},
        {2: 2, 4: 4},
        20.0,
        {2: 6.0, 4: 11.0},
    ),
]
IDEAL_B = 1 + 1 / math.log2(3)


def _report(tolerance: float = 0.005, operating: int = 4):
    return build_report(
        TRACES,
        QRELS,
        dataset="toy",
        points=[2, 4],
        operating_recall_k=operating,
        top_k=1,
        knee_tolerance=tolerance,
        settings={"top_k": 1},
        ingest={"added": 0},
    )


def test_trace_gives_what_was_recorded_at_each_point() -> None:
    assert TRACES[1].two_stage_ranking(4) == ["d8", "d5", "d6", "d7"]
    assert TRACES[0].two_stage_ranking(2) == ["d2", "d1"]
    assert TRACES[0].stage1_ranking() == ["d1", "d2", "d3", "d4"]
    assert (TRACES[0].pairs(2), TRACES[0].pairs(4)) == (2, 4)
    with pytest.raises(ConfigurationError, match=r"recall_k 3 was not evaluated \(sweep points: \[2, 4\]\)"):
        TRACES[0].two_stage_ranking(3)


def test_a_relevant_document_the_cascade_set_aside_is_a_reranker_miss_not_lost() -> None:
    pruned = QueryTrace("c", ["d1", "d2", "d3"], {3: ["d3", "d1"]}, {3: 2}, 1.0, {3: 1.0})
    diagnosis = diagnose(pruned, {"d2": 1}, recall_k=3, top_k=1)
    assert [(doc.stage1_rank, doc.final_rank, doc.outcome) for doc in diagnosis.docs] == [(2, None, RERANKER_MISS)]


def test_sweep_points_sort_deduplicate_and_respect_top_k() -> None:
    assert sweep_points(None, default=100, top_k=5) == [100]
    assert sweep_points([50, 10, 20, 10], default=100, top_k=5) == [10, 20, 50]
    with pytest.raises(ConfigurationError, match="top_k"):
        sweep_points([3, 10], default=100, top_k=5)


def test_parse_sweep() -> None:
    assert parse_sweep("10, 20,50") == [10, 20, 50]
    with pytest.raises(ConfigurationError, match="comma-separated"):
        parse_sweep("10,twenty")


def test_stage1_and_two_stage_metrics_match_hand_computed_values() -> None:
    report = _report()
    ndcg_a1, ndcg_b1 = 1 / math.log2(3), (1 / math.log2(4)) / IDEAL_B
    assert report.stage1["ndcg@10"] == pytest.approx((ndcg_a1 + ndcg_b1) / 2)
    assert report.stage1["mrr@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert report.stage1["recall@1"] == 0.0
    assert report.stage1["recall@4"] == pytest.approx(0.75)
    assert (report.stage1["p50_ms"], report.stage1["p95_ms"]) == pytest.approx((15.0, 19.5))
    assert report.two_stage["ndcg@10"] == pytest.approx((1 + (1 / math.log2(5)) / IDEAL_B) / 2)
    assert report.two_stage["mrr@10"] == pytest.approx((1 + 1 / 4) / 2)
    assert report.two_stage["recall@1"] == pytest.approx(0.5)
    assert report.two_stage["recall@4"] == pytest.approx(0.75)
    assert (report.two_stage["p50_ms"], report.two_stage["p95_ms"]) == pytest.approx((10.0, 10.9))
    assert (report.two_stage["total_p50_ms"], report.two_stage["total_p95_ms"]) == pytest.approx((25.0, 30.4))
    assert report.two_stage["pairs_per_query"] == 4.0


def test_sweep_points_carry_quality_pairs_and_measured_cumulative_cost() -> None:
    small, large = _report().sweep
    assert (small.recall_k, small.stage1_recall, small.ndcg, small.mrr) == (2, 0.5, 0.5, 0.5)
    assert (small.pairs_per_query, small.stage2_p50_ms, small.stage2_p95_ms) == pytest.approx((2.0, 5.0, 5.9))
    assert large.recall_k == 4 and large.stage1_recall == pytest.approx(0.75)
    assert large.ndcg == pytest.approx(_report().two_stage["ndcg@10"])


def test_knee_is_the_smallest_recall_k_within_tolerance_of_the_best() -> None:
    assert _report(tolerance=0.005).recommended_recall_k == 4  # 0.5 vs 0.632: too far
    assert _report(tolerance=0.2).recommended_recall_k == 2
    assert knee(_report().sweep, 0.0) == 4


def test_diagnosis_separates_hits_reranker_misses_and_stage1_losses() -> None:
    hit = diagnose(TRACES[0], QRELS["a"], recall_k=4, top_k=1)
    assert hit.outcome == HIT and [(d.stage1_rank, d.final_rank) for d in hit.docs] == [(2, 1)]
    mixed = diagnose(TRACES[1], QRELS["b"], recall_k=4, top_k=1)
    assert [(d.doc_id, d.stage1_rank, d.final_rank, d.outcome) for d in mixed.docs] == [
        ("d7", 3, 4, RERANKER_MISS),
        ("d9", None, None, LOST),
    ]
    assert mixed.outcome == LOST  # the worst of its documents
    cut = diagnose(TRACES[1], {"d7": 1}, recall_k=2, top_k=1)
    assert (cut.docs[0].stage1_rank, cut.docs[0].final_rank, cut.outcome) == (3, None, LOST)
    assert diagnose(TRACES[1], {"d8": 1}, recall_k=4, top_k=1).outcome == HIT
    assert diagnose(TRACES[1], {"d5": 1}, recall_k=4, top_k=1).outcome == RERANKER_MISS


def test_diagnosis_summary_counts_every_outcome() -> None:
    assert summarize(_report().diagnoses) == {
        "queries": {HIT: 1, RERANKER_MISS: 0, LOST: 1},
        "relevant_docs": {HIT: 1, RERANKER_MISS: 1, LOST: 1},
    }


def test_operating_recall_k_drives_the_headline_and_the_diagnosis() -> None:
    report = _report(operating=2)
    assert report.recall_k == 2
    assert set(report.stage1) == {"ndcg@10", "mrr@10", "recall@1", "recall@2", "p50_ms", "p95_ms"}
    assert report.two_stage["ndcg@10"] == pytest.approx(0.5)
    assert summarize(report.diagnoses)["queries"] == {HIT: 1, RERANKER_MISS: 0, LOST: 1}


def test_report_json_has_the_documented_schema(tmp_path: Path) -> None:
    paths = write_report(_report(), tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(paths)
    data = json.loads(paths["report.json"].read_text())
    assert set(data) == {
        "schema_version", "dataset", "stage1_mode", "queries", "top_k", "recall_k", "stage1", "two_stage", "sweep",
        "recommended_recall_k", "knee_tolerance", "diagnosis", "ingest", "settings",
    }  # fmt: skip
    assert (data["dataset"], data["queries"], data["top_k"], data["recall_k"]) == ("toy", 2, 1, 4)
    metrics = {"ndcg@10", "mrr@10", "recall@1", "recall@4", "p50_ms", "p95_ms"}
    assert set(data["stage1"]) == metrics
    assert set(data["two_stage"]) == metrics | {"pairs_per_query", "total_p50_ms", "total_p95_ms"}
    assert [set(point) for point in data["sweep"]] == 2 * [
        {"recall_k", "stage1_recall", "two_stage_ndcg@10", "two_stage_mrr@10", "pairs_per_query", "stage2_p50_ms",
         "stage2_p95_ms"}
    ]  # fmt: skip
    assert [point["recall_k"] for point in data["sweep"]] == [2, 4]
    assert (data["recommended_recall_k"], data["knee_tolerance"]) == (4, 0.005)
    assert data["diagnosis"]["queries"] == {"hit": 1, "reranker_miss": 0, "lost_before_reranking": 1}
    assert data["settings"] == {"top_k": 1}


def test_per_query_csv_lists_metrics_outcome_and_rank_movement(tmp_path: Path) -> None:
    paths = write_report(_report(), tmp_path)
    with paths["per_query.csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["query_id"] for row in rows] == ["a", "b"]
    assert rows[1]["outcome"] == LOST
    assert rows[1]["relevant"] == "d7:3->4 d9:none->none"
    assert float(rows[0]["two_stage_ndcg@10"]) == 1.0 and float(rows[0]["stage1_mrr@10"]) == 0.5
    assert (rows[1]["stage2_ms"], rows[1]["pairs"]) == ("11.0", "4")
    assert paths["sweep.png"].read_bytes().startswith(b"\x89PNG")
    assert paths["rank_movement.png"].stat().st_size > 0


def test_format_table_names_both_stages_the_sweep_and_the_knee() -> None:
    table = format_table(_report())
    assert "stage 1" in table and "two-stage" in table
    assert "recommended recall_k: 4 (smallest within 0.005 nDCG@10 of the best)" in table
    assert "lost_before_reranking 1" in table
