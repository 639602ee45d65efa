"""One stage-1 retrieval, many recall_k: each query is ranked by the reranker itself at every sweep point.

Stage 1 runs once per query at the largest recall_k. At each sweep point (ascending) the first recall_k candidates go
through :meth:`CrossEncoderRerank.rank <llama_index_twostage.stage2.rerank.CrossEncoderRerank.rank>`, the same
method a query takes (de-duplication, cascade, ``score_threshold``), with a score cache that holds every pair of the
evaluation, so each (query, candidate) pair is scored once across the whole sweep. The stage-2 cost at recall_k=k
is the measured cumulative time of the calls up to k: what was newly scored at each point plus the lookups.
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_index_twostage.errors import ConfigurationError


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
