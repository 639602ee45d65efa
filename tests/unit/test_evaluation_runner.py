"""The per-query loop with a fake stage 1 and a counting reranker: each (query, candidate) pair is scored once."""

from __future__ import annotations

from collections import Counter

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

from llama_index_twostage.evaluation.runner import collection_name, trace_query
from llama_index_twostage.nodes import annotated
from llama_index_twostage.rerank import CrossEncoderRerank
from llama_index_twostage.settings import RetrieverSettings


class FakeReranker(CrossEncoderRerank):
    """Scores a pair by its text's length and records every pair it is asked to score; loads no model."""

    _pairs: list[tuple[str, str]] = PrivateAttr(default_factory=list)
    _calls: int = PrivateAttr(default=0)

    def score(self, query: str, texts: list[str]) -> list[float]:
        self._calls += 1
        self._pairs.extend((query, text) for text in texts)
        return [float(len(text)) for text in texts]


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


def test_trace_query_scores_each_pair_once_across_the_sweep() -> None:
    reranker = FakeReranker(model="fake")
    doc_ids = [f"d{rank}" for rank in range(1, 13)]
    trace = trace_query("q1", "the query", FakeRetriever(doc_ids), reranker, [5, 10, 20])  # type: ignore[arg-type]
    assert trace.candidates == doc_ids  # stage-1 order, mapped to the source documents
    assert trace.stage1_ms == 7.5
    assert reranker._calls == 3  # ranks 1-5, 6-10, then the 2 left of 11-20
    assert len(reranker._pairs) == 12
    assert max(Counter(reranker._pairs).values()) == 1
    assert trace.scores == [float(len(text)) for _, text in reranker._pairs]
    assert [trace.pairs(k) for k in (5, 10, 20)] == [5, 10, 12]
    assert trace.stage2_ms[10] <= trace.stage2_ms[20]


def test_trace_query_of_an_empty_stage1_result_scores_nothing() -> None:
    reranker = FakeReranker(model="fake")
    trace = trace_query("q1", "the query", FakeRetriever([]), reranker, [5])  # type: ignore[arg-type]
    assert (trace.candidates, trace.scores, trace.stage1_ms, trace.stage2_ms) == ([], [], 0.0, {5: 0.0})
    assert reranker._calls == 0


def test_collection_name_is_keyed_by_dataset_and_model_and_valid_for_chroma() -> None:
    assert collection_name("scifact", "/models/all-MiniLM-L6-v2/") == "eval-scifact-all-MiniLM-L6-v2"
    assert collection_name("scifact", "sentence-transformers/all-MiniLM-L6-v2") == "eval-scifact-all-MiniLM-L6-v2"
    odd = collection_name("my data!", "org/model..v2_")
    assert odd == "eval-my-data--model.v2"
    assert RetrieverSettings(collection=odd).collection == odd
