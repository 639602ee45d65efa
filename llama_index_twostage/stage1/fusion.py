"""Reciprocal rank fusion: one ranking from several, using ranks only (BM25 and cosine scores are not comparable).

A candidate's fused score is ``sum(weight_side / (k + rank_side))`` over the sides that found it (Cormack et al.,
2009). ``k`` damps the advantage of the very top ranks: at 60 (the usual value) rank 1 is worth 1/61 and rank 10
1/70, so agreement between the sides counts more than either side's first place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Stage1Mode = Literal["dense", "hybrid", "lexical"]
Side = Literal["dense", "lexical"]


class FusionConfig(BaseModel):
    """How the two sides of hybrid stage 1 are fused: the damping constant and each side's weight."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rrf_k: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="Reciprocal rank fusion constant: score = weight / (rrf_k + rank)."
    )
    dense_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="Weight of the bi-encoder's ranks.")
    lexical_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="Weight of BM25's ranks.")

    @model_validator(mode="after")
    def _one_side_counts(self) -> FusionConfig:
        if self.dense_weight + self.lexical_weight == 0:
            raise ValueError("dense_weight and lexical_weight are both 0: give at least one side a positive weight")
        return self

    @property
    def weights(self) -> dict[Side, float]:
        return {"dense": self.dense_weight, "lexical": self.lexical_weight}

    def describe(self) -> str:
        return f"k={self.rrf_k:g}, dense weight {self.dense_weight:g}, lexical weight {self.lexical_weight:g}"


def reciprocal_rank_fusion(
    rankings: Mapping[Side, Sequence[str]], fusion: FusionConfig | None = None
) -> list[tuple[str, float]]:
    """Ids of every ranking with their fused scores, best first.

    Args:
        rankings: side -> ids, best first (an id appears at most once per side).
        fusion: the constant and the sides' weights (default: k=60, both weights 1).

    Ties are broken by the best rank any side gave, then by the order of ``rankings`` (the first side wins), so
    the result is deterministic.
    """
    fusion = fusion or FusionConfig()
    weights = fusion.weights
    scores: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}
    for order, (side, ids) in enumerate(rankings.items()):
        for rank, node_id in enumerate(ids, 1):
            scores[node_id] = scores.get(node_id, 0.0) + weights[side] / (fusion.rrf_k + rank)
            best[node_id] = min(best.get(node_id, (rank, order)), (rank, order))
    return sorted(scores.items(), key=lambda item: (-item[1], best[item[0]]))
