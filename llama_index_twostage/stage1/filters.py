"""LlamaIndex ``MetadataFilters`` -> a Chroma ``where`` clause, validated so user input cannot inject operators."""

from __future__ import annotations

import math
from typing import Any

from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from llama_index_twostage.errors import ConfigurationError

_OPERATORS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
}
_CONDITIONS = {FilterCondition.AND: "$and", FilterCondition.OR: "$or"}
_ORDERING = ("$gt", "$gte", "$lt", "$lte")
_INT64 = range(-(2**63), 2**63)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar(item: Any, operator: str) -> bool:
    """A value Chroma compares as given: no operator dicts, no NaN, no silently rounded integers."""
    if isinstance(item, bool):
        return operator not in _ORDERING
    if isinstance(item, int):
        return item in _INT64
    if isinstance(item, float):
        return math.isfinite(item)
    return isinstance(item, str) and operator not in _ORDERING and _encodable(item)


def _valid_value(value: Any, operator: str) -> bool:
    """One scalar, or for 'in'/'nin' a non-empty list of scalars of one type (what Chroma accepts)."""
    if operator not in ("$in", "$nin"):
        return _scalar(value, operator)
    return (
        isinstance(value, list)
        and bool(value)
        and all(_scalar(item, operator) for item in value)
        and len({type(item) for item in value}) == 1
    )


def _condition(metadata_filter: MetadataFilter) -> dict[str, Any]:
    if not isinstance(metadata_filter, MetadataFilter):
        raise ConfigurationError(f"invalid metadata filter {metadata_filter!r}: use MetadataFilter or MetadataFilters")
    key, value = metadata_filter.key, metadata_filter.value
    if not isinstance(key, str) or not key or key.startswith("$") or not _encodable(key):
        raise ConfigurationError(f"invalid metadata filter key {key!r}: use a metadata field name, not an operator")
    operator = _OPERATORS.get(metadata_filter.operator)
    if operator is None:
        raise ConfigurationError(
            f"metadata filter operator {metadata_filter.operator.value!r} is not supported by Chroma: "
            f"use one of {sorted(op.value for op in _OPERATORS)}"
        )
    if not _valid_value(value, operator):
        raise ConfigurationError(
            f"invalid value {value!r} for metadata filter on {key!r}: use a string, a finite 64-bit number or a "
            "bool (a number for gt/gte/lt/lte; a non-empty list of one type for 'in'/'nin')"
        )
    return {key: {operator: value}}


def to_chroma_where(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """The Chroma ``where`` for ``filters``; None when there is nothing to filter on."""
    if filters is None or not filters.filters:
        return None
    if filters.condition not in _CONDITIONS:
        raise ConfigurationError(f"filter condition {filters.condition!r} is not supported: use 'and' or 'or'")
    clauses = [
        to_chroma_where(item) if isinstance(item, MetadataFilters) else _condition(item) for item in filters.filters
    ]
    clauses = [clause for clause in clauses if clause]
    if len(clauses) == 1:
        return clauses[0]
    return {_CONDITIONS[filters.condition]: clauses}
