"""The evaluation report: what each stage contributes, what recall_k you need, and the files that show it.

:func:`build_report` turns the per-query traces into metrics (pure; no models) and :func:`format_table` renders the
summary a terminal prints; :func:`~llama_index_twostage.evaluation.artifacts.write_report` writes them to a folder.

``report.json`` schema (version 1; keys are stable, new keys may be added):

- ``schema_version``: 1.
- ``dataset``: dataset name; ``stage1_mode``: dense, hybrid or lexical; ``queries``: number of evaluated queries.
- ``top_k``: final results per query; ``recall_k``: the operating recall_k of ``two_stage`` and ``diagnosis``
  (the settings' recall_k when it is in the sweep, else the largest sweep point).
- ``stage1``: the bi-encoder alone, over its candidates in stage-1 order: ``ndcg@10``, ``mrr@10``,
  ``recall@<top_k>``, ``recall@<recall_k>`` (the ceiling: share of relevant docs handed to the reranker),
  ``p50_ms``, ``p95_ms`` (stage-1 time per query: query embedding, Chroma search and, in hybrid or lexical mode, the
  BM25 search and fusion).
- ``two_stage``: the candidates at ``recall_k`` reordered by the cross-encoder: the same metric keys, where
  ``p50_ms``/``p95_ms`` are the stage-2 (scoring) time per query, plus ``pairs_per_query`` and
  ``total_p50_ms``/``total_p95_ms`` (stage 1 + stage 2 per query).
- ``sweep``: one object per recall_k, ascending: ``recall_k``, ``stage1_recall`` (stage-1 recall@recall_k),
  ``two_stage_ndcg@10``, ``two_stage_mrr@10``, ``pairs_per_query``, ``stage2_p50_ms``, ``stage2_p95_ms``
  (measured cumulative scoring time of the candidates up to recall_k; each pair is scored once for the sweep).
- ``recommended_recall_k``: the smallest swept recall_k whose two-stage nDCG@10 is within ``knee_tolerance``
  (absolute nDCG) of the best swept value.
- ``diagnosis``: ``{"queries": {outcome: count}, "relevant_docs": {outcome: count}}`` at ``recall_k``, outcomes
  ``hit``, ``reranker_miss``, ``lost_before_reranking`` (see :mod:`llama_index_twostage.evaluation.diagnosis`).
- ``ingest``: what ingestion did this run (``added`` is 0 when the corpus was already embedded).
- ``settings``: ``RetrieverSettings.to_dict()`` of the evaluation (Chroma token masked).

The files an evaluation writes (``report.json``, ``per_query.csv``, the figures, ``report.html``) are written by
:mod:`~llama_index_twostage.evaluation.artifacts`.

``per_query.csv``: one row per query: ``query_id``, ``outcome``, ``stage1_<metric>`` and ``two_stage_<metric>`` for
the four quality metrics, ``stage1_ms``, ``stage2_ms``, ``pairs`` and ``relevant`` (``doc:stage1->final(side)`` for
each relevant doc: ``none`` for no rank; side, for a retrieved doc, is the stage-1 side that found it: ``dense``,
``lexical`` or ``both``). ``sweep.png`` and ``rank_movement.png``: see
:mod:`llama_index_twostage.evaluation.plots`. ``report.html``: all of it on one self-contained page (see
:mod:`llama_index_twostage.evaluation.html`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llama_index_twostage.evaluation.diagnosis import QueryDiagnosis, diagnose, summarize
from llama_index_twostage.evaluation.metrics import Qrels, evaluate_run, per_query_metrics
from llama_index_twostage.evaluation.traces import QueryTrace

SCHEMA_VERSION = 1
NDCG = "ndcg@10"
MRR = "mrr@10"


@dataclass(frozen=True)
class SweepPoint:
    """Quality and cost of two-stage retrieval at one recall_k."""

    recall_k: int
    stage1_recall: float
    ndcg: float
    mrr: float
    pairs_per_query: float
    stage2_p50_ms: float
    stage2_p95_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "recall_k": self.recall_k,
            "stage1_recall": self.stage1_recall,
            f"two_stage_{NDCG}": self.ndcg,
            f"two_stage_{MRR}": self.mrr,
            "pairs_per_query": self.pairs_per_query,
            "stage2_p50_ms": self.stage2_p50_ms,
            "stage2_p95_ms": self.stage2_p95_ms,
        }


@dataclass(frozen=True)
class EvaluationReport:
    """Result of :func:`~llama_index_twostage.evaluation.runner.evaluate`; ``to_dict`` is ``report.json``."""

    dataset: str
    top_k: int
    recall_k: int
    stage1: dict[str, float]
    two_stage: dict[str, float]
    sweep: list[SweepPoint]
    recommended_recall_k: int
    knee_tolerance: float
    diagnoses: list[QueryDiagnosis]
    per_query: dict[str, dict[str, float]]
    traces: list[QueryTrace]
    settings: dict[str, Any]
    ingest: dict[str, Any]

    @property
    def stage1_mode(self) -> str:
        return str(self.settings.get("stage1_mode", "dense"))

    @property
    def quality_keys(self) -> list[str]:
        return quality_keys(self.top_k, self.recall_k)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "stage1_mode": self.stage1_mode,
            "queries": len(self.traces),
            "top_k": self.top_k,
            "recall_k": self.recall_k,
            "stage1": self.stage1,
            "two_stage": self.two_stage,
            "sweep": [point.to_dict() for point in self.sweep],
            "recommended_recall_k": self.recommended_recall_k,
            "knee_tolerance": self.knee_tolerance,
            "diagnosis": summarize(self.diagnoses),
            "ingest": self.ingest,
            "settings": self.settings,
        }


def quality_keys(top_k: int, recall_k: int) -> list[str]:
    """The quality metrics of both stages, in report order (one recall key when top_k equals recall_k)."""
    return list(dict.fromkeys([NDCG, MRR, f"recall@{top_k}", f"recall@{recall_k}"]))


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """p50 and p95 (linear interpolation), 0.0 for no values."""
    if not values:
        return 0.0, 0.0
    p50, p95 = np.percentile(np.asarray(values, dtype=float), [50, 95])
    return float(p50), float(p95)


def knee(points: Sequence[SweepPoint], tolerance: float) -> int:
    """The smallest recall_k whose two-stage nDCG@10 is within ``tolerance`` of the best swept value."""
    best = max(point.ndcg for point in points)
    return min(point.recall_k for point in points if point.ndcg >= best - tolerance)


def _timed(prefix: str, values: Sequence[float]) -> dict[str, float]:
    p50, p95 = percentiles(values)
    return {f"{prefix}p50_ms": p50, f"{prefix}p95_ms": p95}


def _two_stage_run(traces: Sequence[QueryTrace], recall_k: int) -> dict[str, list[str]]:
    return {trace.query_id: trace.two_stage_ranking(recall_k) for trace in traces}


def _sweep_point(traces: Sequence[QueryTrace], qrels: Qrels, recall_k: int, stage1_recall: float) -> SweepPoint:
    quality = evaluate_run(_two_stage_run(traces, recall_k), qrels)
    timing = _timed("stage2_", [trace.stage2_ms[recall_k] for trace in traces])
    return SweepPoint(
        recall_k=recall_k,
        stage1_recall=stage1_recall,
        ndcg=quality[NDCG],
        mrr=quality[MRR],
        pairs_per_query=float(np.mean([trace.pairs(recall_k) for trace in traces])) if traces else 0.0,
        **timing,
    )


def _per_query(
    traces: Sequence[QueryTrace], qrels: Qrels, recall_ks: Sequence[int], recall_k: int
) -> dict[str, dict[str, float]]:
    """Per-query quality of both stages, keyed ``stage1_<metric>`` / ``two_stage_<metric>``."""
    runs = {"stage1": {trace.query_id: trace.stage1_ranking() for trace in traces}}
    runs["two_stage"] = _two_stage_run(traces, recall_k)
    rows: dict[str, dict[str, float]] = {trace.query_id: {} for trace in traces}
    for stage, run in runs.items():
        for query_id, scores in per_query_metrics(run, qrels, recall_ks=recall_ks).items():
            rows[query_id].update({f"{stage}_{key}": value for key, value in scores.items()})
    return rows


def _mean(rows: Mapping[str, Mapping[str, float]], key: str) -> float:
    return float(np.mean([row[key] for row in rows.values()])) if rows else 0.0


def build_report(
    traces: Sequence[QueryTrace],
    qrels: Qrels,
    *,
    dataset: str,
    points: Sequence[int],
    operating_recall_k: int,
    top_k: int,
    knee_tolerance: float,
    settings: dict[str, Any],
    ingest: dict[str, Any],
) -> EvaluationReport:
    """All metrics from the traces of the evaluated queries (``qrels`` is restricted to them)."""
    qrels = {trace.query_id: qrels[trace.query_id] for trace in traces}
    recall_ks = sorted({top_k, operating_recall_k, *points})
    rows = _per_query(traces, qrels, recall_ks, operating_recall_k)
    keys = quality_keys(top_k, operating_recall_k)
    sweep = [_sweep_point(traces, qrels, k, _mean(rows, f"stage1_recall@{k}")) for k in points]
    operating = next(point for point in sweep if point.recall_k == operating_recall_k)
    stage2_ms = [trace.stage2_ms[operating_recall_k] for trace in traces]
    return EvaluationReport(
        dataset=dataset,
        top_k=top_k,
        recall_k=operating_recall_k,
        stage1={key: _mean(rows, f"stage1_{key}") for key in keys} | _timed("", [trace.stage1_ms for trace in traces]),
        two_stage={key: _mean(rows, f"two_stage_{key}") for key in keys}
        | _timed("", stage2_ms)
        | {"pairs_per_query": operating.pairs_per_query}
        | _timed("total_", [trace.stage1_ms + ms for trace, ms in zip(traces, stage2_ms)]),
        sweep=sweep,
        recommended_recall_k=knee(sweep, knee_tolerance),
        knee_tolerance=knee_tolerance,
        diagnoses=[diagnose(t, qrels[t.query_id], recall_k=operating_recall_k, top_k=top_k) for t in traces],
        per_query=rows,
        traces=list(traces),
        settings=settings,
        ingest=ingest,
    )


def format_table(report: EvaluationReport) -> str:
    """The summary a terminal prints: both stages side by side, the sweep, the knee and the diagnosis."""
    lines = [
        f"{report.dataset}: {len(report.traces)} queries, top_k={report.top_k}, recall_k={report.recall_k}, "
        f"stage 1 {report.stage1_mode}",
        f"{'metric':<14}{'stage 1':>10}{'two-stage':>11}",
    ]
    for key in [*report.quality_keys, "p50_ms", "p95_ms"]:
        lines.append(f"{key:<14}{report.stage1[key]:>10.4f}{report.two_stage[key]:>11.4f}")
    pairs = report.two_stage["pairs_per_query"]
    lines.append(f"(ms: stage 1 = embed + search; two-stage = reranking only, {pairs:.1f} pairs/query)")
    lines.append(f"{'recall_k':>8}{'s1 recall':>11}{'2s ndcg@10':>12}{'pairs':>7}{'s2 p50 ms':>11}{'s2 p95 ms':>11}")
    for point in report.sweep:
        marker = "  <- recommended" if point.recall_k == report.recommended_recall_k else ""
        lines.append(
            f"{point.recall_k:>8}{point.stage1_recall:>11.4f}{point.ndcg:>12.4f}{point.pairs_per_query:>7.1f}"
            f"{point.stage2_p50_ms:>11.1f}{point.stage2_p95_ms:>11.1f}{marker}"
        )
    lines.append(
        f"recommended recall_k: {report.recommended_recall_k} (smallest within {report.knee_tolerance:g} nDCG@10 "
        "of the best)"
    )
    counts = summarize(report.diagnoses)["queries"]
    lines.append("queries: " + ", ".join(f"{outcome} {count}" for outcome, count in counts.items()))
    return "\n".join(lines)
