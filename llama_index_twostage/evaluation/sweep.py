"""One stage-1 retrieval, many recall_k: each query is ranked by the reranker itself at every sweep point.

Stage 1 runs once per query at the largest recall_k. At each sweep point (ascending) the first recall_k candidates go
through :meth:`CrossEncoderRerank.rank <llama_index_twostage.stage2.rerank.CrossEncoderRerank.rank>`, the same
method a query takes (de-duplication, cascade, ``score_threshold``), with a score cache that holds every pair of the
evaluation, so each (query, candidate) pair is scored once across the whole sweep. The stage-2 cost at recall_k=k
is the measured cumulative time of the calls up to k: what was newly scored at each point plus the lookups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llama_index_twostage.errors import ConfigurationError


@dataclass(frozen=True)
class QueryTrace:
    """Everything measured for one query; the metrics at every recall_k are derived from it.

    ``candidates`` are doc ids in stage-1 order (rank 1 first). Per sweep point: ``rankings`` is what the reranker
    ranked (best first, before the cut to top_k: fewer than recall_k when the cascade or the threshold set some
    aside), ``pairs_scored`` the pairs its ranking scorer read, ``stage2_ms`` the cumulative scoring time.
    ``found_by`` names, per candidate, the side of stage 1 that found it (``dense``, ``lexical`` or ``both``).
    """

    query_id: str
    candidates: list[str]
    rankings: dict[int, list[str]]
    pairs_scored: dict[int, int]
    stage1_ms: float
    stage2_ms: dict[int, float]
    found_by: dict[str, str] = field(default_factory=dict)

    def _point(self, recall_k: int) -> int:
        if recall_k not in self.rankings:
            raise ConfigurationError(
                f"recall_k {recall_k} was not evaluated (sweep points: {sorted(self.rankings)}): add it to the sweep"
            )
        return recall_k

    def pairs(self, recall_k: int) -> int:
        """Pairs the ranking scorer reads at this recall_k (fewer when stage 1 returned fewer candidates)."""
        return self.pairs_scored[self._point(recall_k)]

    def stage1_ranking(self) -> list[str]:
        return list(self.candidates)

    def two_stage_ranking(self, recall_k: int) -> list[str]:
        """The reranker's ranking of the first ``recall_k`` candidates."""
        return list(self.rankings[self._point(recall_k)])


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
