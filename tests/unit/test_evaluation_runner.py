"""The per-query loop with a fake stage 1 and a recording scorer: the reranker's own ranking at every sweep point,
each (query, candidate) pair scored once."""

from __future__ import annotations

from collections import Counter

import pytest
from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode
from support import RecordingScorer

from llama_index_twostage.evaluation.runner import collection_name, trace_query
from llama_index_twostage.nodes import annotated
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.stage2 import CrossEncoderRerank, ScoreCache


class FakeRetriever:
    """Stage 1 stand-in: the documents as annotated nodes, returned out of rank order on purpose."""

    def __init__(self, doc_ids: list[str]) -> None:
        self.doc_ids = doc_ids

    def retrieve(self, query: str) -> list[NodeWithScore]:
        nodes = [
            annotated(
                NodeWithScore(
                    node=TextNode(
                        id_=f"node-{doc_id}",
                        text="x" * (rank % 3 + 1) + doc_id,
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)},
                    ),
                    score=1.0 / rank,
                ),
                stage1_rank=rank,
                stage1_ms=7.5,
            )
            for rank, doc_id in enumerate(self.doc_ids, 1)
        ]
        return nodes[::-1]


DOC_IDS = [f"d{rank}" for rank in range(1, 13)]


def returned_doc_ids(reranker: CrossEncoderRerank, nodes: list[NodeWithScore]) -> list[str]:
    return [scored.node.ref_doc_id for scored in reranker.postprocess_nodes(nodes, query_str="the query")]


def test_trace_query_ranks_through_the_reranker_scoring_each_pair_once() -> None:
    scorer = RecordingScorer()
    reranker = CrossEncoderRerank(scorer, top_k=3, score_cache=ScoreCache(1000))
    trace = trace_query("q1", "the query", FakeRetriever(DOC_IDS), reranker, [5, 10, 20])  # type: ignore[arg-type]
    assert trace.candidates == DOC_IDS  # stage-1 order, mapped to the source documents
    assert trace.stage1_ms == 7.5
    assert [len(call) for call in scorer.calls] == [5, 5, 2]  # ranks 1-5, 6-10, then the 2 left of 11-20
    assert max(Counter(scorer.pairs).values()) == 1
    assert [trace.pairs(k) for k in (5, 10, 20)] == [5, 10, 12]
    assert trace.stage2_ms[5] <= trace.stage2_ms[10] <= trace.stage2_ms[20]
    in_stage1_order = FakeRetriever(DOC_IDS).retrieve("the query")[::-1]
    plain = CrossEncoderRerank(RecordingScorer(), top_k=3)
    for point in (5, 10, 20):
        assert trace.two_stage_ranking(point)[:3] == returned_doc_ids(plain, in_stage1_order[:point])


@pytest.mark.parametrize("cascade_k", [3, 6])
def test_trace_query_with_the_cascade_returns_what_the_reranker_returns(cascade_k: int) -> None:
    def make() -> CrossEncoderRerank:
        # The cheap scorer prefers long texts, the full one prefers late document ids: they disagree.
        return CrossEncoderRerank(
            RecordingScorer(lambda text: int(text.lstrip("x").removeprefix("d")), name="full"),
            top_k=3,
            cascade_scorer=RecordingScorer(len, name="cheap"),
            cascade_k=cascade_k,
            score_threshold=4,
        )

    trace = trace_query("q1", "the query", FakeRetriever(DOC_IDS), make(), [5, 12])  # type: ignore[arg-type]
    in_stage1_order = FakeRetriever(DOC_IDS).retrieve("the query")[::-1]
    for point in (5, 12):
        expected = returned_doc_ids(make(), in_stage1_order[:point])
        assert trace.two_stage_ranking(point)[:3] == expected
        assert len(trace.two_stage_ranking(point)) <= cascade_k  # the shortlist, not every candidate
        assert all(int(doc_id[1:]) >= 4 for doc_id in trace.two_stage_ranking(point))  # the threshold applied


def test_trace_query_of_an_empty_stage1_result_scores_nothing() -> None:
    scorer = RecordingScorer()
    trace = trace_query("q1", "the query", FakeRetriever([]), CrossEncoderRerank(scorer), [5])  # type: ignore[arg-type]
    assert (trace.candidates, trace.two_stage_ranking(5), trace.pairs(5), trace.stage1_ms) == ([], [], 0, 0.0)
    assert scorer.calls == []


def test_collection_name_is_keyed_by_dataset_and_model_and_valid_for_chroma() -> None:
    assert collection_name("scifact", "/models/all-MiniLM-L6-v2/") == "eval-scifact-all-MiniLM-L6-v2"
    assert collection_name("scifact", "sentence-transformers/all-MiniLM-L6-v2") == "eval-scifact-all-MiniLM-L6-v2"
    odd = collection_name("my data!", "org/model..v2_")
    assert odd == "eval-my-data--model.v2"
    assert RetrieverSettings(collection=odd).collection == odd
