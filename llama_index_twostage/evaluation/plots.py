"""The pictures of an evaluation, drawn on matplotlib ``Figure`` objects: no pyplot, so no display is needed and the
caller's backend (a notebook's inline one, say) is left as it was.

- ``sweep.png``: two-stage nDCG@10 and stage-1 recall@recall_k against recall_k, stage-2 milliseconds (p50) on a
  second axis, the recommended recall_k marked: quality bought per millisecond of reranking.
- ``stage1_recall.png`` (when stage-1 modes are compared): recall@k against k for each mode, and the smallest k at
  which each reaches the reference mode's recall at the largest sweep point.
- ``rank_movement.png``: each relevant document's stage-1 rank against its final rank. Points left of the recall_k
  cutoff moved through the reranker; documents stage 1 did not deliver are drawn beyond the cutoff on a
  "lost" row, those it never retrieved at the far right.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from llama_index_twostage.evaluation.compare import Stage1Comparison
    from llama_index_twostage.evaluation.report import EvaluationReport


def plot_sweep(report: EvaluationReport, path: Path) -> None:
    """Quality and cost against recall_k, knee marked."""
    ks = [point.recall_k for point in report.sweep]
    figure = Figure(figsize=(7, 4.5))
    quality = figure.subplots()
    quality.plot(ks, [point.ndcg for point in report.sweep], "o-", label="two-stage nDCG@10")
    quality.plot(ks, [point.stage1_recall for point in report.sweep], "s--", label="stage-1 recall@recall_k")
    quality.axhline(report.stage1["ndcg@10"], color="grey", linestyle=":", label="stage-1 nDCG@10")
    quality.axvline(report.recommended_recall_k, color="green", alpha=0.5, label="recommended recall_k")
    quality.set_xlabel("recall_k (candidates reranked)")
    quality.set_ylabel("score")
    cost = quality.twinx()
    cost.plot(ks, [point.stage2_p50_ms for point in report.sweep], "^-", color="tab:red", label="stage-2 p50 ms")
    cost.set_ylabel("stage-2 ms per query (p50)", color="tab:red")
    handles = quality.get_legend_handles_labels()
    extra = cost.get_legend_handles_labels()
    quality.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower right", fontsize="small")
    quality.set_title(f"{report.dataset}: recall_k sweep (knee tolerance {report.knee_tolerance:g})")
    _save(figure, path)


def plot_rank_movement(report: EvaluationReport, path: Path) -> None:
    """Stage-1 rank vs final rank of every relevant document at the operating recall_k."""
    deepest = max((len(trace.candidates) for trace in report.traces), default=report.recall_k)
    not_retrieved_x = max(deepest, report.recall_k) + 2
    lost_y = report.recall_k + 2
    moved, lost = ([], []), ([], [])
    for diagnosis in report.diagnoses:
        for doc in diagnosis.docs:
            x = doc.stage1_rank if doc.stage1_rank is not None else not_retrieved_x
            target = lost if doc.final_rank is None else moved
            target[0].append(x)
            target[1].append(lost_y if doc.final_rank is None else doc.final_rank)
    figure = Figure(figsize=(6.5, 5))
    axes = figure.subplots()
    axes.scatter(*moved, alpha=0.6, label="delivered to the reranker")
    axes.scatter(*lost, marker="x", color="tab:red", label="lost before reranking")
    axes.plot([1, report.recall_k], [1, report.recall_k], color="grey", linewidth=0.8, label="unchanged rank")
    axes.axvline(report.recall_k + 0.5, color="tab:red", linestyle="--", label=f"recall_k = {report.recall_k}")
    axes.axhline(report.top_k + 0.5, color="green", linestyle=":", label=f"top_k = {report.top_k}")
    axes.set_xlabel(f"stage-1 rank (not retrieved: {not_retrieved_x})")
    axes.set_ylabel(f"final rank (lost: {lost_y})")
    axes.invert_yaxis()
    axes.legend(fontsize="small")
    axes.set_title(f"{report.dataset}: where relevant documents go")
    _save(figure, path)


def plot_stage1_recall(comparison: Stage1Comparison, path: Path) -> None:
    """Stage-1 recall against recall_k for each mode, with the reference's ceiling and where each mode reaches it."""
    ks = list(range(1, comparison.depth + 1))
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for mode in comparison.reports:
        line = axes.plot(ks, comparison.curve(mode), label=f"{mode}")[0]
        matching = comparison.recall_k_matching(mode)
        if matching is not None:
            axes.axvline(matching, color=line.get_color(), linestyle=":", alpha=0.7)
            axes.annotate(f"k={matching}", (matching, comparison.reference_recall), color=line.get_color())
    reference = f"{comparison.reference} recall@{comparison.depth}"
    axes.axhline(comparison.reference_recall, color="grey", linestyle="--", label=reference)
    axes.set_xlabel("recall_k (candidates handed to the reranker)")
    axes.set_ylabel("stage-1 recall@recall_k")
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title(f"{next(iter(comparison.reports.values())).dataset}: recall ceiling per stage-1 mode")
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
