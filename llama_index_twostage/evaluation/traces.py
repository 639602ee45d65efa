"""What one evaluated query leaves behind: the trace every metric, diagnosis and report row is computed from.

A trace holds no model output beyond ids, ranks, counts and times, so metrics are pure functions of it (the unit tests
build traces by hand).
"""

from __future__ import annotations

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
