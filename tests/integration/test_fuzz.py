"""Fuzzed input through ingestion and retrieval: random unicode (surrogates and control characters included),
empty and huge texts, random metadata. Nothing fails outside the documented errors, every accepted document is
retrievable by its id afterwards with its metadata intact, and a refused batch writes nothing.

Most properties use the cheap hash embedding; a few examples go through the real models.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from llama_index.core import Document
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
from pydantic import ValidationError

from llama_index_twostage.errors import (
    CollectionNotFoundError,
    DocumentError,
    EmptyQueryError,
    InvalidQueryError,
    TwoStageError,
)
from llama_index_twostage.nodes import STAGE_KEY
from llama_index_twostage.pipeline import TwoStagePipeline, ingest_documents
from llama_index_twostage.store import ChromaStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ANY_CHAR = st.characters(exclude_categories=())  # surrogates, control and unassigned characters too
VALID_CHAR = st.characters()  # everything but surrogates
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=60),
    st.text(st.sampled_from("\x00\t\n\r\x0b\x1b \u200b\u2028\ufeff"), max_size=20),
    st.builds(lambda word, n: word * n, st.text(ANY_CHAR, min_size=1, max_size=8), st.integers(100, 600)),
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(ANY_CHAR, max_size=30),
    st.lists(st.integers(), max_size=2),
)
METADATA = st.dictionaries(st.text(ANY_CHAR, max_size=10), VALUES, max_size=3)
DOCUMENTS = st.lists(
    st.builds(
        Document,
        id_=st.text(VALID_CHAR, min_size=1, max_size=12) | st.text(ANY_CHAR, max_size=4),
        text=TEXT,
        metadata=METADATA | st.dictionaries(st.text(VALID_CHAR, min_size=1, max_size=8), st.text(VALID_CHAR)),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda document: document.id_,
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def stored_count(settings_) -> int:
    try:
        return ChromaStore(settings_.collection, settings_.chroma).open_collection().count()
    except CollectionNotFoundError:
        return 0


def by_source(settings_, doc_id: str) -> list[str]:
    collection = ChromaStore(settings_.collection, settings_.chroma).open_collection()
    return collection.get(where={"ref_doc_id": doc_id}, include=[])["ids"]


def retrieved_metadata(settings_, embed_model, document: Document) -> dict:
    """The document's metadata as retrieval gives it back, found through a filter on its id."""
    only = MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", value=document.id_)])
    retriever = TwoStagePipeline(settings_, embed_model=embed_model).retriever(filters=only, recall_k=1)
    (found,) = retriever.retrieve("anything")
    assert found.node.ref_doc_id == document.id_
    return {key: value for key, value in found.node.metadata.items() if key != STAGE_KEY}


def same_values(got: dict, expected: dict) -> bool:
    """Equal, with NaN equal to itself (the only value that is not)."""
    return got.keys() == expected.keys() and all(
        got[key] == expected[key] or got[key] != got[key] and expected[key] != expected[key] for key in got
    )


@FUZZ
@given(documents=DOCUMENTS)
def test_fuzzed_documents_are_stored_whole_or_refused_whole(cheap_settings, hash_embedding, documents):
    target = cheap_settings("memory")
    try:
        report = ingest_documents(documents, target, embed_model=hash_embedding)
    except DocumentError as error:
        event("refused")
        assert "document" in str(error)
        assert stored_count(target) == 0  # checked before anything was written
        return
    event("stored")
    assert report.added + report.already_stored + report.skipped_empty == report.chunks
    for document in documents:
        if by_source(target, document.id_):
            assert same_values(retrieved_metadata(target, hash_embedding, document), document.metadata)
        else:  # nothing to embed: no text, and no metadata in the embedded view
            assert not document.text.strip()


@pytest.fixture(scope="module")
def small_collection(cheap_settings, pipeline_for):
    from support import HashEmbedding

    pipeline = pipeline_for(cheap_settings("memory", recall_k=3, top_k=2), embed_model=HashEmbedding())
    pipeline.ingest([Document(id_=f"d{i}", text=f"document number {i}") for i in range(5)])
    return pipeline


def check_query(retriever, query: str, expected_results: int) -> None:
    """Results, or a refusal: empty queries and broken Unicode only, each with its own error."""
    try:
        results = retriever.retrieve(query)
    except (TwoStageError, ValidationError) as error:
        if isinstance(error, EmptyQueryError):
            assert not query.strip()
        else:
            assert isinstance(error, InvalidQueryError) and "surrogate" in str(error), error
        return
    assert len(results) == expected_results


@FUZZ
@given(query=TEXT)
@example(query="\ud800 a JSON escape gone wrong")
def test_fuzzed_queries_retrieve_or_are_refused(small_collection, query):
    check_query(small_collection.retriever(), query, 3)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=TEXT)
@example(query="\ud800 a JSON escape gone wrong")
@example(query="\x00\x1b\u200b control characters \ufeff")
def test_fuzzed_queries_through_the_real_models(ingested, pipeline_for, query):
    settings = ingested.settings.model_copy(update={"recall_k": 5, "top_k": 2})
    check_query(pipeline_for(settings).two_stage_retriever(), query, 2)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents=DOCUMENTS)
def test_fuzzed_documents_through_the_real_model(settings_for, pipeline_for, documents):
    target = settings_for("memory")
    try:
        pipeline_for(target).ingest(documents)
    except DocumentError:
        return
    for document in documents:
        assert by_source(target, document.id_) or not document.text.strip()
