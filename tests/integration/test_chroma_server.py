"""The same retrieval through a real `chroma run` server (sync and async, both through its HttpClient)."""

from __future__ import annotations

import math

import pytest
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

from llama_index_twostage.nodes import model_text, stage_info
from llama_index_twostage.pipeline import TwoStagePipeline, build_two_stage_retriever
from llama_index_twostage.stage2 import CrossEncoderRerank, CrossEncoderScorer
from llama_index_twostage.store import CollectionContract, model_identity

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def same_docs_embedded(ingested, pipeline_for, subset_ids):
    """The session's embedded collection restricted to the same documents (same chunk ids, same vectors)."""
    filters = MetadataFilters(filters=[MetadataFilter(key="doc_id", value=subset_ids, operator=FilterOperator.IN)])
    return pipeline_for(ingested.settings.model_copy(update={"recall_k": 12, "top_k": 4})), filters


def ids(nodes) -> list[str]:
    return [n.node.node_id for n in nodes]


def test_server_collection_records_the_contract(server_pipeline):
    contract = CollectionContract.of(server_pipeline.store.open_collection())
    assert contract is not None
    assert model_identity(contract.embed_model) == "all-MiniLM-L6-v2"
    assert (contract.dimension, contract.space) == (384, "cosine")


def test_reingesting_on_server_adds_nothing(server_pipeline, scifact, subset_ids):
    again = server_pipeline.ingest([scifact.corpus[doc_id] for doc_id in subset_ids])
    assert again.added == 0 and again.stored_total == server_pipeline.store.open_collection().count()


async def test_stage1_server_sync_async_and_embedded_agree(server_pipeline, same_docs_embedded, some_queries):
    embedded_pipeline, filters = same_docs_embedded
    # Dense: BM25 statistics differ between a collection and a filtered view of a larger one (test_hybrid_stage1
    # holds hybrid to server/embedded and sync/async agreement on identical corpora).
    server = server_pipeline.retriever(stage1_mode="dense")
    embedded = embedded_pipeline.retriever(filters=filters, stage1_mode="dense")
    for query in some_queries:
        reference = embedded.retrieve(query)
        sync = server.retrieve(query)
        asynchronous = await server.aretrieve(query)
        assert len(reference) == 12
        assert ids(sync) == ids(asynchronous) == ids(reference)
        assert [n.score for n in sync] == pytest.approx([n.score for n in reference], abs=1e-5)
        assert [n.score for n in asynchronous] == pytest.approx([n.score for n in reference], abs=1e-5)


async def test_two_stage_on_server_matches_embedded(server_pipeline, same_docs_embedded, some_queries):
    embedded_pipeline, filters = same_docs_embedded
    server = build_two_stage_retriever(server_pipeline.settings)  # the two-line convenience, from settings alone
    reference = embedded_pipeline.two_stage_retriever(filters=filters).retrieve(some_queries[0])
    sync = server.retrieve(some_queries[0])
    asynchronous = await server.aretrieve(some_queries[0])
    assert len(sync) == 4
    assert ids(sync) == ids(asynchronous) == ids(reference)
    assert [n.score for n in asynchronous] == pytest.approx([n.score for n in reference], abs=1e-5)


@pytest.fixture(scope="module")
def server_candidates(server_pipeline, some_queries):
    return server_pipeline.retriever().retrieve(some_queries[1]), some_queries[1]


def reranker(pipeline, **update) -> CrossEncoderRerank:
    """The pipeline's reranker, returning all 12 candidates, with other settings where given."""
    settings = pipeline.settings.model_copy(update={"top_k": 12, **update})
    return TwoStagePipeline(settings, models=pipeline.models, store=pipeline.store, lexical=pipeline.lexical).reranker()


def test_score_threshold_drops_low_scores(server_pipeline, server_candidates):
    candidates, query = server_candidates
    everything = reranker(server_pipeline).postprocess_nodes(candidates, query_str=query)
    threshold = everything[len(everything) // 2].score  # keeps about half
    kept = reranker(server_pipeline, score_threshold=threshold).postprocess_nodes(candidates, query_str=query)
    assert 0 < len(kept) < len(everything)
    assert all(n.score >= threshold for n in kept)
    assert ids(kept) == [n.node.node_id for n in everything if n.score >= threshold]
    assert [stage_info(n)["final_rank"] for n in kept] == list(range(1, len(kept) + 1))


def test_normalize_does_not_apply_a_second_sigmoid(server_pipeline, server_candidates):
    # The test reranker already outputs sigmoid scores: normalize must leave them alone.
    candidates, query = server_candidates
    plain = reranker(server_pipeline).postprocess_nodes(candidates, query_str=query)
    normalized = reranker(server_pipeline, normalize_scores=True).postprocess_nodes(candidates, query_str=query)
    assert ids(plain) == ids(normalized)
    assert [n.score for n in normalized] == pytest.approx([n.score for n in plain], abs=1e-6)
    assert all(0.0 <= n.score <= 1.0 for n in normalized)


def test_normalize_maps_logits_to_probabilities(server_candidates, rerank_model_dir):
    """A logits model (like hub ms-marco cross-encoders), made by loading the same weights without activation."""
    import torch
    from sentence_transformers import CrossEncoder

    candidates, query = server_candidates
    logits_model = CrossEncoder(rerank_model_dir, activation_fn=torch.nn.Identity())
    sigmoid_model = CrossEncoder(rerank_model_dir)  # the model as published, same window
    texts = {n.node.node_id: model_text(n.node) for n in candidates}
    expected = dict(zip(texts, map(float, sigmoid_model.predict([(query, text) for text in texts.values()]))))

    def rerank(normalize: bool):
        scorer = CrossEncoderScorer(logits_model, name=rerank_model_dir, normalize=normalize)
        return CrossEncoderRerank(scorer, top_k=12).postprocess_nodes(candidates, query_str=query)

    logits, probabilities = rerank(False), rerank(True)
    assert ids(logits) == ids(probabilities)
    assert any(n.score < 0 for n in logits)
    for logit, probability in zip(logits, probabilities):
        assert probability.score == pytest.approx(expected[probability.node.node_id], abs=1e-5)
        assert probability.score == pytest.approx(1 / (1 + math.exp(-logit.score)), abs=1e-6)
