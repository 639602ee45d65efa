"""Reciprocal rank fusion: one ranking from several, using ranks only (BM25 and cosine scores are not comparable).

A candidate's fused score is ``sum(weight_side / (k + rank_side))`` over the sides that found it (Cormack et al.,
2009). ``k`` damps the advantage of the very top ranks: at 60 (the usual value) rank 1 is worth 1/61 and rank 10
1/70, so agreement between the sides counts more than either side's first place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llama_index_twostage.errors import ConfigurationError


def reciprocal_rank_fusion(
    rankings: Mapping[str, Sequence[str]], weights: Mapping[str, float], *, k: float = 60.0
) -> list[tuple[str, float]]:
    """Ids of every ranking with their fused scores, best first.

    Args:
        rankings: side name -> ids, best first (an id appears at most once per side).
        weights: side name -> weight (>= 0) of its ranks; every side of ``rankings`` needs one.
        k: the damping constant (> 0).

    Ties are broken by the best rank any side gave, then by the order of ``rankings`` (the first side wins), so
    the result is deterministic.
    """
    if k <= 0:
        raise ConfigurationError(f"the fusion constant k must be positive, got {k}")
    missing = [side for side in rankings if side not in weights]
    if missing or any(weights[side] < 0 for side in rankings):
        raise ConfigurationError(f"every side needs a weight >= 0, got {dict(weights)} for sides {list(rankings)}")
    scores: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}
    for order, (side, ids) in enumerate(rankings.items()):
        for rank, node_id in enumerate(ids, 1):
            scores[node_id] = scores.get(node_id, 0.0) + weights[side] / (k + rank)
            best[node_id] = min(best.get(node_id, (rank, order)), (rank, order))
    return sorted(scores.items(), key=lambda item: (-item[1], best[item[0]]))
