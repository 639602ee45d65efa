"""The pictures of an evaluation, each a matplotlib ``Figure`` drawn from plain sequences: no pyplot, so no display is
needed and the caller's backend (a notebook's inline one, say) is left as it was, and nothing here knows a report
(:mod:`~llama_index_twostage.evaluation.artifacts` reads the report and saves the figures).

- sweep: two-stage nDCG@10 and stage-1 recall@recall_k against recall_k, stage-2 milliseconds (p50) on a second
  axis, the recommended recall_k marked: quality bought per millisecond of reranking.
- stage-1 recall (when stage-1 modes are compared): recall@k against k for each mode, and the smallest k at which
  each reaches the reference mode's recall at the largest sweep point.
- rank movement: each relevant document's stage-1 rank against its final rank. Points left of the recall_k cutoff
  moved through the reranker; documents stage 1 did not deliver are drawn beyond the cutoff on a "lost" row, those
  it never retrieved at the far right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

Ranks = tuple[int | None, int | None]
"""A relevant document's (stage-1 rank, final rank); None where it has none."""


def sweep_figure(
    recall_ks: Sequence[int],
    ndcg: Sequence[float],
    stage1_recall: Sequence[float],
    stage2_p50_ms: Sequence[float],
    *,
    stage1_ndcg: float,
    recommended_recall_k: int,
    title: str,
) -> Figure:
    """Quality and cost against recall_k (one value per recall_k in each sequence), the knee marked."""
    figure = Figure(figsize=(7, 4.5))
    quality = figure.subplots()
    quality.plot(recall_ks, ndcg, "o-", label="two-stage nDCG@10")
    quality.plot(recall_ks, stage1_recall, "s--", label="stage-1 recall@recall_k")
    quality.axhline(stage1_ndcg, color="grey", linestyle=":", label="stage-1 nDCG@10")
    quality.axvline(recommended_recall_k, color="green", alpha=0.5, label="recommended recall_k")
    quality.set_xlabel("recall_k (candidates reranked)")
    quality.set_ylabel("score")
    cost = quality.twinx()
    cost.plot(recall_ks, stage2_p50_ms, "^-", color="tab:red", label="stage-2 p50 ms")
    cost.set_ylabel("stage-2 ms per query (p50)", color="tab:red")
    handles = quality.get_legend_handles_labels()
    extra = cost.get_legend_handles_labels()
    quality.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower right", fontsize="small")
    quality.set_title(title)
    return figure


def rank_movement_figure(ranks: Sequence[Ranks], *, recall_k: int, top_k: int, deepest: int, title: str) -> Figure:
    """Stage-1 rank against final rank of each relevant document; ``deepest`` is the most candidates a query had."""
    not_retrieved_x = max(deepest, recall_k) + 2
    lost_y = recall_k + 2
    moved: tuple[list[int], list[int]] = ([], [])
    lost: tuple[list[int], list[int]] = ([], [])
    for stage1_rank, final_rank in ranks:
        target = lost if final_rank is None else moved
        target[0].append(stage1_rank if stage1_rank is not None else not_retrieved_x)
        target[1].append(lost_y if final_rank is None else final_rank)
    figure = Figure(figsize=(6.5, 5))
    axes = figure.subplots()
    axes.scatter(*moved, alpha=0.6, label="delivered to the reranker")
    axes.scatter(*lost, marker="x", color="tab:red", label="lost before reranking")
    axes.plot([1, recall_k], [1, recall_k], color="grey", linewidth=0.8, label="unchanged rank")
    axes.axvline(recall_k + 0.5, color="tab:red", linestyle="--", label=f"recall_k = {recall_k}")
    axes.axhline(top_k + 0.5, color="green", linestyle=":", label=f"top_k = {top_k}")
    axes.set_xlabel(f"stage-1 rank (not retrieved: {not_retrieved_x})")
    axes.set_ylabel(f"final rank (lost: {lost_y})")
    axes.invert_yaxis()
    axes.legend(fontsize="small")
    axes.set_title(title)
    return figure


def stage1_recall_figure(
    curves: Mapping[str, Sequence[float]],
    matching: Mapping[str, int | None],
    *,
    reference_recall: float,
    reference_label: str,
    title: str,
) -> Figure:
    """Recall@k for k = 1.. of each mode (``curves``), the reference's ceiling, and the k at which each mode reaches it
    (``matching``; None: not within the curve)."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for mode, curve in curves.items():
        line = axes.plot(range(1, len(curve) + 1), curve, label=mode)[0]
        k = matching.get(mode)
        if k is not None:
            axes.axvline(k, color=line.get_color(), linestyle=":", alpha=0.7)
            axes.annotate(f"k={k}", (k, reference_recall), color=line.get_color())
    axes.axhline(reference_recall, color="grey", linestyle="--", label=reference_label)
    axes.set_xlabel("recall_k (candidates handed to the reranker)")
    axes.set_ylabel("stage-1 recall@recall_k")
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title(title)
    return figure


def save(figure: Figure, path: Path) -> Path:
    """``figure`` as a PNG at ``path``."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
