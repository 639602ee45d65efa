"""The files an evaluation leaves: what ``twostage eval --out`` and :func:`write_report` write, in one place.

- :func:`write_report`: ``report.json``, ``per_query.csv`` (schemas in :mod:`~llama_index_twostage.evaluation.report`),
  ``sweep.png``, ``rank_movement.png`` (:mod:`~llama_index_twostage.evaluation.plots`) and ``report.html``
  (:mod:`~llama_index_twostage.evaluation.html`).
- :func:`write_comparison`: each mode's report in ``<mode>/``, ``comparison.json`` (schema in
  :mod:`~llama_index_twostage.evaluation.compare`) and ``stage1_recall.png``.

This module sits on top of the others: it reads reports and comparisons and hands the plots plain sequences, so
nothing below it imports it back.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llama_index_twostage.evaluation.compare import Stage1Comparison
from llama_index_twostage.evaluation.diagnosis import DocDiagnosis
from llama_index_twostage.evaluation.html import write_html
from llama_index_twostage.evaluation.report import NDCG, EvaluationReport


def write_report(report: EvaluationReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``per_query.csv``, ``sweep.png``, ``rank_movement.png`` and ``report.html`` (the
    page that shows them all); returns their paths."""
    from llama_index_twostage.evaluation import plots  # matplotlib: the ``eval`` extra

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("report.json", "per_query.csv")}
    _write_json(report.to_dict(), paths["report.json"])
    rows = _csv_rows(report)
    with paths["per_query.csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["query_id"])
        writer.writeheader()
        writer.writerows(rows)
    sweep = report.sweep
    paths["sweep.png"] = plots.save(
        plots.sweep_figure(
            [point.recall_k for point in sweep],
            [point.ndcg for point in sweep],
            [point.stage1_recall for point in sweep],
            [point.stage2_p50_ms for point in sweep],
            stage1_ndcg=report.stage1[NDCG],
            recommended_recall_k=report.recommended_recall_k,
            title=f"{report.dataset}: recall_k sweep (knee tolerance {report.knee_tolerance:g})",
        ),
        out / "sweep.png",
    )
    paths["rank_movement.png"] = plots.save(
        plots.rank_movement_figure(
            [(doc.stage1_rank, doc.final_rank) for diagnosis in report.diagnoses for doc in diagnosis.docs],
            recall_k=report.recall_k,
            top_k=report.top_k,
            deepest=max((len(trace.candidates) for trace in report.traces), default=report.recall_k),
            title=f"{report.dataset}: where relevant documents go",
        ),
        out / "rank_movement.png",
    )
    figures = {
        "Quality and cost against recall_k": paths["sweep.png"],
        "Where the relevant documents went: stage-1 rank against final rank": paths["rank_movement.png"],
    }
    paths["report.html"] = write_html(report, figures, out / "report.html")
    return paths


def write_comparison(comparison: Stage1Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Each mode's report in ``out_dir/<mode>/``, ``comparison.json`` and ``stage1_recall.png`` in ``out_dir``."""
    from llama_index_twostage.evaluation import plots  # matplotlib: the ``eval`` extra

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for mode, report in comparison.reports.items():
        write_report(report, out / mode)
    paths = {"comparison.json": _write_json(comparison.to_dict(), out / "comparison.json")}
    figure = plots.stage1_recall_figure(
        comparison.curves,
        {mode: comparison.recall_k_matching(mode) for mode in comparison.reports},
        reference_recall=comparison.reference_recall,
        reference_label=f"{comparison.reference} recall@{comparison.depth}",
        title=f"{comparison.reports[comparison.reference].dataset}: recall ceiling per stage-1 mode",
    )
    paths["stage1_recall.png"] = plots.save(figure, out / "stage1_recall.png")
    return paths


def _write_json(data: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _rank(rank: int | None) -> str:
    return "none" if rank is None else str(rank)


def _movement(doc: DocDiagnosis) -> str:
    side = f"({doc.found_by})" if doc.found_by else ""
    return f"{doc.doc_id}:{_rank(doc.stage1_rank)}->{_rank(doc.final_rank)}{side}"


def _csv_rows(report: EvaluationReport) -> list[dict[str, Any]]:
    rows = []
    for trace, diagnosis in zip(report.traces, report.diagnoses):
        metrics = report.per_query[trace.query_id]
        row: dict[str, Any] = {"query_id": trace.query_id, "outcome": diagnosis.outcome}
        for stage in ("stage1", "two_stage"):
            row.update({f"{stage}_{key}": round(metrics[f"{stage}_{key}"], 6) for key in report.quality_keys})
        row["stage1_ms"] = round(trace.stage1_ms, 3)
        row["stage2_ms"] = round(trace.stage2_ms[report.recall_k], 3)
        row["pairs"] = trace.pairs(report.recall_k)
        row["relevant"] = " ".join(_movement(doc) for doc in diagnosis.docs)
        rows.append(row)
    return rows
