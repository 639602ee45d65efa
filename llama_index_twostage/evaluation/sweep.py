"""One stage-1 retrieval, many recall_k: how each query's candidates are scored once and ranked at every sweep point.

Stage 1 runs once per query at the largest recall_k. The cross-encoder then scores the candidates in stage-1 order,
one increment per sweep boundary (ranks 1-10, 11-20, 21-50, ...), and each increment is timed. So every
(query, candidate) pair is scored at most once across the whole sweep, and the stage-2 cost at recall_k=k is the
measured cumulative time of the increments up to k, not an extrapolation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.timing import Stopwatch

ScoreFn = Callable[[list[str]], list[float]]
"""Cross-encoder scores of one query against the given candidate texts, in order."""


@dataclass(frozen=True)
class QueryTrace:
    """Everything measured for one query; the metrics at every recall_k are derived from it.

    ``candidates`` are doc ids in stage-1 order (rank 1 first), ``scores`` their cross-encoder scores (same order;
    shorter when stage 1 returned fewer than the largest recall_k), ``stage2_ms`` the cumulative scoring time at
    each sweep point.
    """

    query_id: str
    candidates: list[str]
    scores: list[float]
    stage1_ms: float
    stage2_ms: dict[int, float]

    def pairs(self, recall_k: int) -> int:
        """Pairs the cross-encoder reads at this recall_k (fewer when stage 1 returned fewer candidates)."""
        return min(recall_k, len(self.scores))

    def stage1_ranking(self) -> list[str]:
        return list(self.candidates)

    def two_stage_ranking(self, recall_k: int) -> list[str]:
        """The first ``recall_k`` candidates by descending rerank score; ties keep stage-1 order (sort is stable)."""
        count = self.pairs(recall_k)
        order = sorted(range(count), key=lambda index: -self.scores[index])
        return [self.candidates[index] for index in order]


def sweep_points(sweep: Sequence[int] | None, *, default: int, top_k: int) -> list[int]:
    """Sorted, distinct recall_k values to evaluate; ``[default]`` when no sweep is given.

    Each must be at least ``top_k``, as in the settings: the reranker cannot return more than it is handed.
    """
    points = sorted(set(sweep)) if sweep else [default]
    if points[0] < top_k:
        raise ConfigurationError(f"every recall_k in the sweep must be >= top_k ({top_k}), got {points}")
    return points


def parse_sweep(text: str) -> list[int]:
    """``"10,20,50"`` -> ``[10, 20, 50]``, for command lines and config strings."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigurationError(f"invalid sweep {text!r}: give comma-separated integers such as 10,20,50") from None


def score_incrementally(
    texts: Sequence[str], points: Sequence[int], score: ScoreFn
) -> tuple[list[float], dict[int, float]]:
    """Score ``texts`` (stage-1 order) one sweep increment at a time; each text is scored exactly once.

    Returns the scores and, per sweep point, the cumulative milliseconds spent scoring up to it.
    """
    scores: list[float] = []
    cumulative_ms: dict[int, float] = {}
    elapsed = 0.0
    for point in points:
        increment = list(texts[len(scores) : point])
        if increment:
            with Stopwatch() as watch:
                scores.extend(score(increment))
            elapsed += watch.ms
        cumulative_ms[point] = elapsed
    return scores, cumulative_ms
