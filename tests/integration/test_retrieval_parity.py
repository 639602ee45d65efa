"""Both stages against a reference computed independently: numpy cosine for stage 1, CrossEncoder.predict for
stage 2; and the stage metadata and caller's nodes across them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from llama_index.core.schema import QueryBundle

from llama_index_twostage.nodes import model_text, stage_info
from llama_index_twostage.pipeline import TwoStageRetriever

pytestmark = pytest.mark.integration

RECALL_K = 15


@pytest.fixture(scope="module")
def stored(ingested):
    """Every stored id and embedding, straight from Chroma."""
    records = ingested.pipeline.store.open_collection().get(include=["embeddings"])
    return records["ids"], np.asarray(records["embeddings"], dtype=np.float64)


@pytest.fixture(scope="module")
def recall(ingested):
    return ingested.pipeline.retriever(recall_k=RECALL_K, stage1_mode="dense")


@pytest.fixture(scope="module")
def reference_cross_encoder(rerank_model_dir):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(rerank_model_dir)


def exact_cosine(query: str, ingested, stored) -> dict[str, float]:
    ids, matrix = stored
    q = np.asarray(ingested.pipeline.embed_model.get_query_embedding(query), dtype=np.float64)
    cosines = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    return dict(zip(ids, cosines.tolist()))


def test_stage1_equals_exact_cosine_ranking(ingested, stored, recall, some_queries, same_ranking):
    for query in some_queries:
        results = recall.retrieve(query)
        exact = exact_cosine(query, ingested, stored)
        expected_ids = sorted(exact, key=exact.get, reverse=True)[:RECALL_K]
        got_ids = [r.node.node_id for r in results]
        same_ranking(got_ids, expected_ids, exact, tol=1e-5)
        for result in results:
            assert result.score == pytest.approx(exact[result.node.node_id], abs=1e-4)


def test_stage1_metadata(recall, some_queries):
    results = recall.retrieve(some_queries[0])
    infos = [stage_info(r) for r in results]
    assert [info["stage1_rank"] for info in infos] == list(range(1, RECALL_K + 1))
    assert [info["stage1_score"] for info in infos] == [r.score for r in results]
    assert all(info["stage1_ms"] > 0 for info in infos)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert "query_truncated" not in infos[0]


def test_stage2_equals_cross_encoder_predict(
    ingested, pipeline_for, recall, reference_cross_encoder, some_queries, same_ranking
):
    reranker = pipeline_for(ingested.settings.model_copy(update={"top_k": RECALL_K})).reranker()
    query = some_queries[1]
    candidates = recall.retrieve(query)
    reranked = reranker.postprocess_nodes(candidates, query_str=query)

    texts = {c.node.node_id: model_text(c.node) for c in candidates}
    predicted = reference_cross_encoder.predict([(query, texts[node_id]) for node_id in texts])
    expected = dict(zip(texts, (float(score) for score in predicted)))

    scores = [r.score for r in reranked]
    assert all(type(score) is float for score in scores)
    assert scores == sorted(scores, reverse=True)
    same_ranking(
        [r.node.node_id for r in reranked], sorted(expected, key=expected.get, reverse=True), expected, tol=1e-5
    )
    for result in reranked:
        assert result.score == pytest.approx(expected[result.node.node_id], abs=1e-5)
        assert stage_info(result)["rerank_score"] == result.score


def test_rerank_leaves_the_callers_nodes_unchanged(ingested, recall, some_queries):
    query = some_queries[2]
    candidates = recall.retrieve(query)
    before = copy.deepcopy(candidates)
    reranked = ingested.pipeline.reranker().postprocess_nodes(candidates, query_str=query)

    assert len(reranked) == ingested.settings.top_k
    assert [c.node.node_id for c in candidates] == [b.node.node_id for b in before]
    assert [c.score for c in candidates] == [b.score for b in before]
    for node, old in zip(candidates, before):
        assert node.node.metadata == old.node.metadata
        assert node.node.excluded_llm_metadata_keys == old.node.excluded_llm_metadata_keys
        assert node.node.excluded_embed_metadata_keys == old.node.excluded_embed_metadata_keys
        assert "final_rank" not in stage_info(node)


def test_stage1_metadata_survives_into_final_results(ingested, recall, reference_cross_encoder, some_queries):
    query = some_queries[3]
    candidates = recall.retrieve(query)
    stage1 = {r.node.node_id: stage_info(r) for r in candidates}
    two_stage = TwoStageRetriever(recall, ingested.pipeline.reranker())
    final = two_stage.retrieve(QueryBundle(query))
    window = reference_cross_encoder.max_length  # the reference tokenizer's own count of pairs cut by the window
    pair_lengths = [len(reference_cross_encoder.tokenizer(query, model_text(c.node))["input_ids"]) for c in candidates]
    truncated = sum(length > window for length in pair_lengths)

    assert len(final) == ingested.settings.top_k
    for rank, result in enumerate(final, 1):
        info = stage_info(result)
        assert info["stage1_rank"] == stage1[result.node.node_id]["stage1_rank"]
        assert info["stage1_score"] == stage1[result.node.node_id]["stage1_score"]
        assert info["stage1_ms"] > 0 and info["stage2_ms"] > 0
        assert info["final_rank"] == rank
        assert info["rerank_score"] == result.score
        assert info["pairs_scored"] == RECALL_K
        assert info["pairs_truncated"] == truncated
        assert info["skipped_non_text"] == 0 and info["duplicates_removed"] == 0
