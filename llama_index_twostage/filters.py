"""LlamaIndex ``MetadataFilters`` -> a Chroma ``where`` clause, validated so user input cannot inject operators."""

from __future__ import annotations

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
_SCALARS = (str, int, float, bool)


def _condition(metadata_filter: MetadataFilter) -> dict[str, Any]:
    key, value = metadata_filter.key, metadata_filter.value
    if not isinstance(key, str) or not key or key.startswith("$"):
        raise ConfigurationError(f"invalid metadata filter key {key!r}: use a metadata field name, not an operator")
    operator = _OPERATORS.get(metadata_filter.operator)
    if operator is None:
        raise ConfigurationError(
            f"metadata filter operator {metadata_filter.operator.value!r} is not supported by Chroma: "
            f"use one of {sorted(op.value for op in _OPERATORS)}"
        )
    values = value if operator in ("$in", "$nin") else [value]
    if not isinstance(values, list) or not all(isinstance(item, _SCALARS) for item in values):
        raise ConfigurationError(
            f"invalid value {value!r} for metadata filter on {key!r}: use a string, number or bool "
            "(a list of them for 'in'/'nin')"
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
