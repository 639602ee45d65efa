"""Our results compose with LlamaIndex's own retrievers, engines, evaluators and docstores: the same chunk is the
same node (id and hash) whoever retrieved it and whatever diagnostics a query recorded on it."""

from __future__ import annotations

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.chat_engine import ContextChatEngine
from llama_index.core.evaluation import RetrieverEvaluator
from llama_index.core.llms import MockLLM
from llama_index.core.retrievers import QueryFusionRetriever, RouterRetriever
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.selectors import EmbeddingSingleSelector
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.core.tools import RetrieverTool

from llama_index_twostage import stage_info
from llama_index_twostage.store.contract import SOURCE_KEY

pytestmark = pytest.mark.integration

RRF_K = 60.0  # QueryFusionRetriever's constant


@pytest.fixture(scope="module")
def stock_dense(ingested):
    """LlamaIndex's own dense retriever (VectorStoreIndex over ChromaVectorStore) on the collection we ingested."""
    from llama_index.vector_stores.chroma import ChromaVectorStore

    pipeline = ingested.pipeline
    index = VectorStoreIndex.from_vector_store(
        ChromaVectorStore(chroma_collection=pipeline.store.open_collection()), embed_model=pipeline.embed_model
    )
    return index.as_retriever(similarity_top_k=20)


def by_id(results: list[NodeWithScore]) -> dict[str, NodeWithScore]:
    return {result.node.node_id: result for result in results}


def test_a_chunk_has_one_id_and_hash_whichever_retriever_and_query_found_it(ingested, stock_dense, some_queries):
    pipeline = ingested.pipeline
    query = some_queries[0]
    ours = {
        "dense": by_id(pipeline.retriever(stage1_mode="dense").retrieve(query)),
        "hybrid": by_id(pipeline.retriever().retrieve(query)),
        "lexical": by_id(pipeline.retriever(stage1_mode="lexical").retrieve(query)),
        "two-stage": by_id(pipeline.two_stage_retriever().retrieve(query)),
        "another query": by_id(pipeline.retriever().retrieve(some_queries[1])),
    }
    stock = by_id(stock_dense.retrieve(query))
    for name, results in ours.items():
        shared = set(results) & set(stock)
        assert shared, name
        for node_id in shared:
            assert stage_info(results[node_id]) and not stage_info(stock[node_id])  # diagnostics differ ...
            assert results[node_id].node.hash == stock[node_id].node.hash, name  # ... the identity does not
    two_stage = ours["two-stage"]
    for node_id, result in two_stage.items():
        assert result.node.hash == ours["hybrid"][node_id].node.hash
        assert stage_info(result)["final_rank"] and "final_rank" not in stage_info(ours["hybrid"][node_id])


def test_query_fusion_sums_reciprocal_ranks_of_shared_chunks(ingested, stock_dense, some_queries):
    two_stage = ingested.pipeline.two_stage_retriever()
    fusion = QueryFusionRetriever(
        [two_stage, stock_dense],
        mode="reciprocal_rerank",
        similarity_top_k=5,
        num_queries=1,
        use_async=False,
        llm=MockLLM(),
    )
    for query in some_queries[:2]:
        sides = [two_stage.retrieve(query), stock_dense.retrieve(query)]
        expected: dict[str, float] = {}
        for side in sides:
            for rank, result in enumerate(sorted(side, key=lambda r: -(r.score or 0.0))):
                expected[result.node.node_id] = expected.get(result.node.node_id, 0.0) + 1.0 / (rank + RRF_K)
        shared = set(by_id(sides[0])) & set(by_id(sides[1]))
        assert shared  # the point of the test: chunks both retrievers return

        fused = fusion.retrieve(query)
        assert len(fused) == 5 and len({result.node.node_id for result in fused}) == 5
        best = sorted(expected.values(), reverse=True)[:5]
        assert [result.score for result in fused] == pytest.approx(best)
        for result in fused:
            assert result.score == pytest.approx(expected[result.node.node_id])
        assert shared & {result.node.node_id for result in fused}  # a summed score made the top


def test_router_retriever_routes_to_the_two_stage_retriever(ingested, stock_dense, some_queries):
    pipeline = ingested.pipeline
    two_stage = pipeline.two_stage_retriever()
    router = RouterRetriever(
        selector=EmbeddingSingleSelector.from_defaults(embed_model=pipeline.embed_model),
        retriever_tools=[
            RetrieverTool.from_defaults(two_stage, description="Biomedical research claims, clinical trials, genes"),
            RetrieverTool.from_defaults(stock_dense, description="Cooking recipes: baking bread and cakes"),
        ],
        llm=MockLLM(),
    )
    routed = router.retrieve(some_queries[0])
    direct = two_stage.retrieve(some_queries[0])
    assert [r.node.node_id for r in routed] == [r.node.node_id for r in direct]
    assert [r.node.hash for r in routed] == [r.node.hash for r in direct]
    assert [stage_info(r)["final_rank"] for r in routed] == [1, 2, 3, 4, 5]


def test_context_chat_engine_reads_our_chunks_and_not_our_diagnostics(ingested, some_queries):
    two_stage = ingested.pipeline.two_stage_retriever()
    engine = ContextChatEngine.from_defaults(retriever=two_stage, llm=MockLLM())  # MockLLM echoes its prompt
    response = engine.chat(some_queries[0])
    direct = two_stage.retrieve(some_queries[0])
    assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in direct]
    for result in response.source_nodes:
        assert result.node.get_content() in response.response
        assert stage_info(result)["final_rank"]
    assert "stage1_rank" not in response.response and "twostage" not in response.response


def test_retriever_evaluator_scores_the_two_stage_retriever(ingested):
    pipeline = ingested.pipeline
    two_stage = pipeline.two_stage_retriever()
    evaluator = RetrieverEvaluator.from_metric_names(["hit_rate", "mrr"], retriever=two_stage)
    collection = pipeline.store.open_collection()
    dataset = ingested.dataset
    for query_id in list(dataset.queries)[:3]:
        relevant = list(dataset.qrels[query_id])
        expected = collection.get(where={SOURCE_KEY: {"$in": relevant}}, include=[])["ids"]
        query = dataset.queries[query_id]
        result = evaluator.evaluate(query, expected_ids=expected)
        ours = [r.node.node_id for r in two_stage.retrieve(query)]
        assert result.retrieved_ids == ours
        first = next((rank for rank, node_id in enumerate(ours, 1) if node_id in expected), None)
        assert result.metric_vals_dict["hit_rate"] == (1.0 if first else 0.0)
        assert result.metric_vals_dict["mrr"] == pytest.approx(1.0 / first if first else 0.0)


def test_docstore_round_trip_keeps_the_chunk_and_its_hash(ingested, stock_dense, some_queries, tmp_path):
    results = ingested.pipeline.two_stage_retriever().retrieve(some_queries[0])
    before = {r.node.node_id: stage_info(r) for r in results}
    docstore = SimpleDocumentStore()
    docstore.add_documents([r.node for r in results])
    docstore.persist(str(tmp_path / "docstore.json"))
    loaded = SimpleDocumentStore.from_persist_path(str(tmp_path / "docstore.json"))
    stock = by_id(stock_dense.retrieve(some_queries[0]))
    for result in results:
        node = loaded.get_node(result.node.node_id)
        assert type(node) is TextNode  # a docstore holds the chunk, not one query's diagnostics
        assert node.hash == result.node.hash == loaded.get_document_hash(node.node_id)
        assert node.get_content() == result.node.get_content() and node.ref_doc_id == result.node.ref_doc_id
        assert "twostage" not in node.metadata and "twostage" not in node.excluded_llm_metadata_keys
        if node.node_id in stock:  # exactly what LlamaIndex's own retriever returns for the chunk
            assert node.metadata == stock[node.node_id].node.metadata
            assert node.hash == stock[node.node_id].node.hash
    assert {r.node.node_id: stage_info(r) for r in results} == before  # the results themselves keep theirs
