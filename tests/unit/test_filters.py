"""LlamaIndex MetadataFilters -> Chroma `where`, and refusal of anything that could inject operators."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.stage1.filters import to_chroma_where


def where(*filters, condition=FilterCondition.AND):
    return to_chroma_where(MetadataFilters(filters=list(filters), condition=condition))


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        (FilterOperator.EQ, "a", {"k": {"$eq": "a"}}),
        (FilterOperator.NE, 1, {"k": {"$ne": 1}}),
        (FilterOperator.GT, 1.5, {"k": {"$gt": 1.5}}),
        (FilterOperator.GTE, 2, {"k": {"$gte": 2}}),
        (FilterOperator.LT, 3, {"k": {"$lt": 3}}),
        (FilterOperator.LTE, 4, {"k": {"$lte": 4}}),
        (FilterOperator.IN, ["a", "b"], {"k": {"$in": ["a", "b"]}}),
        (FilterOperator.NIN, [1, 2], {"k": {"$nin": [1, 2]}}),
    ],
)
def test_each_supported_operator(operator, value, expected):
    assert where(MetadataFilter(key="k", value=value, operator=operator)) == expected


def test_no_filters_means_no_where():
    assert to_chroma_where(None) is None
    assert to_chroma_where(MetadataFilters(filters=[])) is None


def test_single_filter_is_unwrapped():
    assert where(MetadataFilter(key="year", value=2020)) == {"year": {"$eq": 2020}}


@pytest.mark.parametrize(("condition", "key"), [(FilterCondition.AND, "$and"), (FilterCondition.OR, "$or")])
def test_several_filters_are_joined(condition, key):
    result = where(
        MetadataFilter(key="a", value=1),
        MetadataFilter(key="b", value="x", operator=FilterOperator.NE),
        condition=condition,
    )
    assert result == {key: [{"a": {"$eq": 1}}, {"b": {"$ne": "x"}}]}


def test_nested_and_or():
    inner = MetadataFilters(
        filters=[MetadataFilter(key="lang", value="en"), MetadataFilter(key="lang", value="de")],
        condition=FilterCondition.OR,
    )
    outer = MetadataFilters(
        filters=[MetadataFilter(key="year", value=2020, operator=FilterOperator.GTE), inner],
        condition=FilterCondition.AND,
    )
    assert to_chroma_where(outer) == {
        "$and": [{"year": {"$gte": 2020}}, {"$or": [{"lang": {"$eq": "en"}}, {"lang": {"$eq": "de"}}]}]
    }


def test_nested_single_filter_is_unwrapped_too():
    inner = MetadataFilters(filters=[MetadataFilter(key="lang", value="en")])
    outer = MetadataFilters(filters=[MetadataFilter(key="year", value=2020), inner])
    assert to_chroma_where(outer) == {"$and": [{"year": {"$eq": 2020}}, {"lang": {"$eq": "en"}}]}


@pytest.mark.parametrize("key", ["$where", "$and", "$or", ""])
def test_operator_keys_are_refused(key):
    with pytest.raises(ConfigurationError, match="invalid metadata filter key"):
        where(MetadataFilter(key=key, value=1))


@pytest.mark.parametrize(
    ("operator", "value"),
    [
        (FilterOperator.EQ, {"$ne": 1}),  # an operator smuggled in as the value
        (FilterOperator.IN, [{"$ne": 1}]),
        (FilterOperator.IN, "not-a-list"),
        (FilterOperator.EQ, None),
        (FilterOperator.EQ, [1, 2]),
    ],
)
def test_operator_or_structured_values_are_refused(operator, value):
    # model_construct: LlamaIndex's own validation would refuse a dict, but callers can build one this way.
    bad = MetadataFilter.model_construct(key="k", value=value, operator=operator)
    with pytest.raises(ConfigurationError, match="invalid value"):
        where(bad)


@pytest.mark.parametrize(
    "operator",
    [
        FilterOperator.ANY,
        FilterOperator.ALL,
        FilterOperator.TEXT_MATCH,
        FilterOperator.TEXT_MATCH_INSENSITIVE,
        FilterOperator.CONTAINS,
        FilterOperator.IS_EMPTY,
    ],
)
def test_unsupported_operators_are_refused(operator):
    with pytest.raises(ConfigurationError, match=f"{operator.value!r} is not supported"):
        where(MetadataFilter(key="k", value="v", operator=operator))


def test_not_condition_is_refused():
    with pytest.raises(ConfigurationError, match="not supported"):
        where(MetadataFilter(key="a", value=1), MetadataFilter(key="b", value=2), condition=FilterCondition.NOT)


def test_refusal_inside_nested_filters():
    inner = MetadataFilters(filters=[MetadataFilter(key="$or", value=1)])
    with pytest.raises(ConfigurationError):
        to_chroma_where(MetadataFilters(filters=[MetadataFilter(key="a", value=1), inner]))


# --- values Chroma would refuse at query time, or silently compare wrongly ----------------------------------------


@pytest.mark.parametrize("key", [1, None, ("a",), "\ud800"])
def test_non_string_or_unencodable_keys_are_refused(key):
    bad = MetadataFilter.model_construct(key=key, value=1, operator=FilterOperator.EQ)
    with pytest.raises(ConfigurationError, match="invalid metadata filter key"):
        where(bad)


@pytest.mark.parametrize(
    ("operator", "value"),
    [
        (FilterOperator.EQ, {"a": {"$or": [{"b": 1}]}}),  # a nested where smuggled in
        (FilterOperator.IN, [[1, 2]]),
        (FilterOperator.IN, ["a", {"$ne": 1}]),
        (FilterOperator.IN, []),  # Chroma: "expected a non-empty list"
        (FilterOperator.IN, ["a", 1]),  # Chroma: "all values of the same type"
        (FilterOperator.GT, "b"),  # Chroma compares only numbers
        (FilterOperator.LTE, True),
        (FilterOperator.EQ, float("nan")),
        (FilterOperator.EQ, float("inf")),
        (FilterOperator.EQ, 2**70),  # Chroma would round it to a float
        (FilterOperator.EQ, "\udfff"),
    ],
)
def test_values_chroma_would_refuse_or_alter_are_refused(operator, value):
    bad = MetadataFilter.model_construct(key="k", value=value, operator=operator)
    with pytest.raises(ConfigurationError, match="invalid value"):
        where(bad)


def test_something_other_than_a_filter_is_refused():
    bad = MetadataFilters.model_construct(filters=[{"$or": [{"a": 1}]}], condition=FilterCondition.AND)
    with pytest.raises(ConfigurationError, match="invalid metadata filter"):
        to_chroma_where(bad)


# --- fuzzed user input: refused with ConfigurationError, or a where clause Chroma runs as meant ------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(alphabet=st.characters(exclude_categories=()))
)
USER_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=6,
)
USER_KEYS = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=())),  # surrogates included
    st.sampled_from(["$or", "$and", "$ne", "$where"]),
    st.integers(),
)


@pytest.fixture(scope="module")
def probe_collection():
    from llama_index_twostage.store import ChromaStore

    with ChromaStore(mode="memory") as store:
        collection = store.client.get_or_create_collection("filter-fuzz", embedding_function=None)
        collection.upsert(ids=["x"], embeddings=[[1.0, 0.0]], metadatas=[{"k": 1, "s": "a"}])
        yield collection


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=USER_KEYS, value=USER_VALUES, operator=st.sampled_from(list(FilterOperator)))
def test_user_input_cannot_inject_operators(probe_collection, key, value, operator):
    user_filter = MetadataFilter.model_construct(key=key, value=value, operator=operator)
    try:
        clause = where(user_filter)
    except ConfigurationError:
        return
    ((field, condition),) = clause.items()
    assert field == key and not field.startswith("$")
    ((chroma_operator, operand),) = condition.items()
    assert chroma_operator.startswith("$") and operand == value
    assert not any(isinstance(item, dict) for item in (value if isinstance(value, list) else [value]))
    probe_collection.get(where=clause)  # Chroma accepts every clause we let through
