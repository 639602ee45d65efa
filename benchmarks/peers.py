"""The rerankers users would otherwise pick, each on the same model and candidates as ours (the ``bench`` extra).

Each factory returns ``rank(nodes, query) -> doc ids, best first`` (the top ``top_k``), driving the peer through its
public API exactly as its documentation shows, with its own defaults except the model, the device and ``top_k``.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.schema import NodeWithScore

RankIds = Callable[[list[NodeWithScore], str], list[str]]


def llamaindex_stock(model: str, top_k: int, device: str | None) -> RankIds:
    reranker = SentenceTransformerRerank(top_n=top_k, model=model, device=device)

    def rank(nodes: list[NodeWithScore], query: str) -> list[str]:
        return [scored.node.node_id for scored in reranker.postprocess_nodes(nodes, query_str=query)]

    return rank


def langchain(model: str, top_k: int, device: str | None) -> RankIds:
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from langchain_core.documents import Document

    reranker = CrossEncoderReranker(
        model=HuggingFaceCrossEncoder(model_name=model, model_kwargs={"device": device or "cpu"}), top_n=top_k
    )

    def rank(nodes: list[NodeWithScore], query: str) -> list[str]:
        documents = [Document(page_content=n.node.get_content(), metadata={"id": n.node.node_id}) for n in nodes]
        return [document.metadata["id"] for document in reranker.compress_documents(documents, query)]

    return rank


def haystack(model: str, top_k: int, device: str | None) -> RankIds:
    from haystack import Document
    from haystack.utils import ComponentDevice
    from haystack_integrations.components.rankers.sentence_transformers import SentenceTransformersSimilarityRanker

    ranker = SentenceTransformersSimilarityRanker(
        model=model, top_k=top_k, device=ComponentDevice.from_str(device) if device else None
    )
    ranker.warm_up()

    def rank(nodes: list[NodeWithScore], query: str) -> list[str]:
        documents = [Document(id=n.node.node_id, content=n.node.get_content()) for n in nodes]
        return [document.id for document in ranker.run(query=query, documents=documents)["documents"]]

    return rank


def answerdotai_rerankers(model: str, top_k: int, device: str | None) -> RankIds:
    from rerankers import Reranker

    ranker = Reranker(model, model_type="cross-encoder", device=device or "cpu", verbose=0)

    def rank(nodes: list[NodeWithScore], query: str) -> list[str]:
        texts = [n.node.get_content() for n in nodes]
        results = ranker.rank(query=query, docs=texts, doc_ids=[n.node.node_id for n in nodes])
        return [str(result.doc_id) for result in results.top_k(top_k)]

    return rank
