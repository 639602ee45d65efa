"""Ingestion is idempotent and keeps LlamaIndex's node layout; ChromaVectorStore collections read both ways."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex

from llama_index_twostage.nodes import stage_info
from llama_index_twostage.pipeline import ingest_documents

pytestmark = pytest.mark.integration

FACTS = {
    "cats": "Cats are small domesticated carnivores that purr when content.",
    "volcano": "A volcano erupts when magma rises through the crust and escapes as lava and ash.",
    "insulin": "Insulin is a hormone produced by the pancreas that regulates blood glucose.",
    "jupiter": "Jupiter is the largest planet in the solar system, a gas giant with a great red spot.",
    "bread": "Bread dough rises because yeast ferments sugars and releases carbon dioxide.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the moon.",
}


def fact_documents() -> list[Document]:
    return [
        Document(id_=key, text=text, metadata={"topic": key, "year": 2000 + i})
        for i, (key, text) in enumerate(FACTS.items())
    ]


def test_reingesting_adds_nothing(ingested):
    count = ingested.pipeline.store.open_collection().count()
    assert ingested.report.added == ingested.report.stored_total == count
    # Through the two-line convenience, from the settings alone (its own store, its own model).
    again = ingest_documents(list(ingested.dataset.corpus.values()), ingested.settings)
    assert again.added == 0
    assert again.already_stored == ingested.report.added
    assert again.stored_total == count
    assert ingested.pipeline.store.open_collection().count() == count


def test_ingestion_resumes_with_only_the_new_documents(settings_for, pipeline_for):
    pipeline = pipeline_for(settings_for("memory"))
    documents = fact_documents()
    first = pipeline.ingest(documents[:3])
    second = pipeline.ingest(documents)
    assert (first.added, first.stored_total) == (3, 3)
    assert (second.added, second.already_stored, second.stored_total) == (3, 3, 6)


def test_ingestion_does_not_modify_the_documents(settings_for, pipeline_for):
    documents = fact_documents()
    before = [(d.id_, d.text, dict(d.metadata)) for d in documents]
    pipeline_for(settings_for("memory")).ingest(documents)
    assert [(d.id_, d.text, dict(d.metadata)) for d in documents] == before


def test_retrieved_nodes_keep_ref_doc_id_and_metadata(ingested, some_queries):
    corpus = ingested.dataset.corpus
    results = ingested.pipeline.retriever(recall_k=10).retrieve(some_queries[0])
    assert len(results) == 10
    for result in results:
        node = result.node
        document = corpus[node.ref_doc_id]
        assert node.metadata.get("title") == document.metadata.get("title")
        assert node.get_content() in document.text
        assert "title" in node.excluded_embed_metadata_keys  # the BEIR loader's exclusions survive storage


@pytest.fixture(scope="module")
def llamaindex_collection(settings_for, pipeline_for, embed_model_dir):
    """A collection written by LlamaIndex itself: VectorStoreIndex + ChromaVectorStore + HuggingFaceEmbedding."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    pipeline = pipeline_for(settings_for("memory", recall_k=10, top_k=3))
    collection = pipeline.store.client.create_collection(pipeline.settings.collection)
    vector_store = ChromaVectorStore(chroma_collection=collection)
    VectorStoreIndex.from_documents(
        fact_documents(),
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=HuggingFaceEmbedding(model_name=embed_model_dir),
    )
    return pipeline, collection


def test_reads_a_collection_written_by_chroma_vector_store(llamaindex_collection):
    pipeline, collection = llamaindex_collection
    records = collection.get(include=["documents", "embeddings"])
    vectors = dict(zip(records["ids"], np.asarray(records["embeddings"])))
    written = dict(zip(records["ids"], records["documents"]))
    results = pipeline.retriever(stage1_mode="dense").retrieve(FACTS["insulin"])

    assert len(results) == len(FACTS)  # recall_k 10 > 6 nodes: all of them
    assert {r.node.node_id for r in results} == set(written)
    top = results[0].node
    assert top.get_content() == FACTS["insulin"]
    assert top.ref_doc_id == "insulin"
    assert written[top.node_id] == FACTS["insulin"]
    assert top.metadata["topic"] == "insulin" and top.metadata["year"] == 2002
    # ChromaVectorStore leaves the space at l2; scores must still be cosine similarities.
    query = np.asarray(pipeline.embed_model.get_query_embedding(FACTS["insulin"]))
    for result in results:
        vector = vectors[result.node.node_id]
        cosine = float(vector @ query / (np.linalg.norm(vector) * np.linalg.norm(query)))
        assert result.score == pytest.approx(cosine, abs=1e-4)
    assert stage_info(results[0])["stage1_rank"] == 1
    for result in results:
        assert result.node.get_content() == FACTS[result.node.ref_doc_id]


def test_hybrid_reads_a_foreign_collection_once_it_is_indexed(llamaindex_collection):
    """The in-memory store's BM25 index is built from Chroma on first use; the dense side keeps its cosines."""
    pipeline, _ = llamaindex_collection
    dense = {r.node.node_id: r.score for r in pipeline.retriever(stage1_mode="dense").retrieve(FACTS["insulin"])}
    results = pipeline.retriever().retrieve(FACTS["insulin"])
    assert results[0].node.ref_doc_id == "insulin"
    assert stage_info(results[0])["lexical_rank"] == stage_info(results[0])["dense_rank"] == 1
    for result in results:
        info = stage_info(result)
        if "dense_rank" in info:
            assert info["dense_score"] == pytest.approx(dense[result.node.node_id])
    assert pipeline.lexical.count() == len(FACTS)


def test_filters_apply_to_foreign_collections(llamaindex_collection):
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

    pipeline, _ = llamaindex_collection
    filters = MetadataFilters(filters=[MetadataFilter(key="year", value=2003, operator=FilterOperator.GTE)])
    results = pipeline.retriever(filters=filters).retrieve("planets and gravity")
    assert {r.node.ref_doc_id for r in results} == {"jupiter", "bread", "tides"}


def test_chroma_vector_store_reads_what_we_ingested(ingested, some_queries):
    from llama_index.vector_stores.chroma import ChromaVectorStore

    pipeline = ingested.pipeline
    index = VectorStoreIndex.from_vector_store(
        ChromaVectorStore(chroma_collection=pipeline.store.open_collection()), embed_model=pipeline.embed_model
    )
    theirs = index.as_retriever(similarity_top_k=5).retrieve(some_queries[0])
    ours = pipeline.retriever(recall_k=5, stage1_mode="dense").retrieve(some_queries[0])
    assert [n.node.node_id for n in theirs] == [n.node.node_id for n in ours]
    assert [n.node.get_content() for n in theirs] == [n.node.get_content() for n in ours]
    # Scores are not compared: ChromaVectorStore maps distances to scores by its own convention.
