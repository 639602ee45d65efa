"""Stage-1 modes side by side: how many candidates each needs for the same recall ceiling.

The reranker can only reorder what stage 1 hands it, so the number that decides stage-2 cost is the ``recall_k`` at
which a mode's recall reaches a target. :class:`Stage1Comparison` puts each mode's evaluation next to the others
(stage-1 nDCG@10, recall at every sweep point, the pipeline's nDCG@10 and pairs per query) and finds the smallest
recall_k at which each mode reaches the reference mode's recall at the largest sweep point.

``comparison.json`` (``schema_version`` 1): ``dataset``, ``reference`` (the first mode), ``reference_recall``
(its recall at the largest sweep point), and per mode under ``modes``: ``stage1_ndcg@10``, ``stage1_recall`` (sweep
point -> recall), ``two_stage_ndcg@10`` and ``pairs_per_query`` at the operating recall_k, and
``recall_k_for_reference_recall`` (None when the mode never reaches it within the largest sweep point).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, get_args

from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.evaluation.datasets import RetrievalDataset
from llama_index_twostage.evaluation.metrics import Qrels, recall_curve
from llama_index_twostage.evaluation.report import NDCG, EvaluationReport
from llama_index_twostage.evaluation.runner import evaluate_stage1_modes
from llama_index_twostage.settings import RetrieverSettings, Stage1Mode

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Stage1Comparison:
    """Evaluations of the same dataset, settings and reranker that differ only in ``stage1_mode``; the first mode is
    the reference."""

    reports: Mapping[str, EvaluationReport]
    qrels: Qrels

    @property
    def reference(self) -> str:
        return next(iter(self.reports))

    @property
    def depth(self) -> int:
        return self.reports[self.reference].sweep[-1].recall_k

    @cached_property
    def curves(self) -> dict[str, list[float]]:
        """Stage-1 recall@k of each mode for k = 1..depth (computed once: the table, the JSON and the plot read it)."""
        curves = {}
        for mode, report in self.reports.items():
            qrels = {trace.query_id: self.qrels[trace.query_id] for trace in report.traces}
            run = {trace.query_id: trace.candidates for trace in report.traces}
            curves[mode] = recall_curve(run, qrels, self.depth)
        return curves

    def curve(self, mode: str) -> list[float]:
        """Stage-1 recall@k of ``mode`` for k = 1..depth."""
        return self.curves[mode]

    @property
    def reference_recall(self) -> float:
        """The reference mode's recall at the largest sweep point: the ceiling to match."""
        return self.curve(self.reference)[-1]

    def recall_k_matching(self, mode: str) -> int | None:
        """The smallest recall_k at which ``mode`` reaches :attr:`reference_recall` (None: not within depth)."""
        target = self.reference_recall - 1e-12
        return next((k for k, recall in enumerate(self.curve(mode), 1) if recall >= target), None)

    def to_dict(self) -> dict[str, Any]:
        modes = {}
        for mode, report in self.reports.items():
            modes[mode] = {
                f"stage1_{NDCG}": report.stage1[NDCG],
                "stage1_recall": {point.recall_k: point.stage1_recall for point in report.sweep},
                f"two_stage_{NDCG}": report.two_stage[NDCG],
                "pairs_per_query": report.two_stage["pairs_per_query"],
                "recall_k_for_reference_recall": self.recall_k_matching(mode),
            }
        return {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.reports[self.reference].dataset,
            "reference": self.reference,
            "reference_recall": self.reference_recall,
            "depth": self.depth,
            "modes": modes,
        }

    def format_table(self) -> str:
        """The side-by-side summary a terminal prints."""
        first = self.reports[self.reference]
        points = [point.recall_k for point in first.sweep]
        header = f"{'stage 1':<9}{'s1 ndcg@10':>11}" + "".join(f"{f'R@{k}':>8}" for k in points)
        header += f"{f'2s ndcg@10 (k={first.recall_k})':>22}{'pairs/q':>9}{'k for ref':>11}"
        lines = [f"{first.dataset}: {len(first.traces)} queries, stage-1 modes compared (reference {self.reference})"]
        lines.append(header)
        for mode, report in self.reports.items():
            matching = self.recall_k_matching(mode)
            lines.append(
                f"{mode:<9}{report.stage1[NDCG]:>11.4f}"
                + "".join(f"{point.stage1_recall:>8.4f}" for point in report.sweep)
                + f"{report.two_stage[NDCG]:>22.4f}{report.two_stage['pairs_per_query']:>9.1f}"
                + f"{matching if matching is not None else '-':>11}"
            )
        lines.append(
            f"'k for ref': the smallest recall_k at which a mode's stage-1 recall reaches {self.reference}'s "
            f"recall@{self.depth} ({self.reference_recall:.4f}); fewer candidates = less stage-2 work"
        )
        return "\n".join(lines)


def compare_stage1(
    dataset: RetrievalDataset, settings: RetrieverSettings, modes: Sequence[Stage1Mode], **options: Any
) -> Stage1Comparison:
    """Evaluate each stage-1 mode (the first is the reference) on one ingestion and one reranker; ``options`` are
    :func:`~llama_index_twostage.evaluation.runner.evaluate`'s (``sweep``, ``limit``, ``knee_tolerance``, ...)."""
    if len(set(modes)) < 2 or len(set(modes)) != len(modes):
        raise ConfigurationError(f"compare at least two different stage-1 modes, e.g. dense,hybrid; got {list(modes)}")
    reports = evaluate_stage1_modes(dataset, settings, modes, **options)
    return Stage1Comparison(reports, dataset.qrels)


def parse_modes(text: str) -> list[Stage1Mode]:
    """``"dense,hybrid"`` -> ``["dense", "hybrid"]``, checked, for command lines."""
    modes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [mode for mode in modes if mode not in get_args(Stage1Mode)]
    if unknown:
        raise ConfigurationError(f"unknown stage-1 modes {unknown}: use {', '.join(get_args(Stage1Mode))}")
    return modes  # type: ignore[return-value]
