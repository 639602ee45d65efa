"""The factory: the only place that wires stage 1, stage 2 and LlamaIndex's query engine together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle

from llama_index_twostage.rerank import CrossEncoderRerank
from llama_index_twostage.retriever import ChromaRecallRetriever
from llama_index_twostage.settings import RetrieverSettings

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import LLM
    from llama_index.core.vector_stores.types import MetadataFilters


def build_retriever(
    settings: RetrieverSettings,
    *,
    embed_model: BaseEmbedding | None = None,
    filters: MetadataFilters | None = None,
) -> ChromaRecallRetriever:
    """Stage 1 alone: the ``recall_k`` nearest nodes by cosine similarity."""
    return ChromaRecallRetriever(settings, embed_model=embed_model, filters=filters)


def build_reranker(settings: RetrieverSettings, **overrides: Any) -> CrossEncoderRerank:
    """Stage 2 alone, as a LlamaIndex node postprocessor usable in any query engine."""
    return CrossEncoderRerank.from_settings(settings, **overrides)


class TwoStageRetriever(BaseRetriever):
    """Both stages as one LlamaIndex retriever, for retrieval without an LLM.

    Returns the final ``top_k`` nodes; each one's ``metadata["twostage"]`` carries both ranks and scores and the
    per-stage timings (``stage1_ms``, ``stage2_ms``, ``pairs_scored``).
    """

    def __init__(self, recall: ChromaRecallRetriever, rerank: CrossEncoderRerank) -> None:
        super().__init__(callback_manager=recall.callback_manager)
        self.recall = recall
        self.rerank = rerank

    @classmethod
    def from_settings(
        cls,
        settings: RetrieverSettings,
        *,
        embed_model: BaseEmbedding | None = None,
        filters: MetadataFilters | None = None,
    ) -> TwoStageRetriever:
        return cls(build_retriever(settings, embed_model=embed_model, filters=filters), build_reranker(settings))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.rerank.postprocess_nodes(self.recall.retrieve(query_bundle), query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        candidates = await self.recall.aretrieve(query_bundle)
        return await self.rerank.apostprocess_nodes(candidates, query_bundle)


def build_two_stage_retriever(
    settings: RetrieverSettings,
    *,
    embed_model: BaseEmbedding | None = None,
    filters: MetadataFilters | None = None,
) -> TwoStageRetriever:
    """Both stages behind the ``BaseRetriever`` interface."""
    return TwoStageRetriever.from_settings(settings, embed_model=embed_model, filters=filters)


def build_query_engine(
    settings: RetrieverSettings,
    llm: LLM | None = None,
    *,
    embed_model: BaseEmbedding | None = None,
    filters: MetadataFilters | None = None,
    **engine_kwargs: Any,
) -> RetrieverQueryEngine:
    """A LlamaIndex ``RetrieverQueryEngine``: stage 1 as retriever, stage 2 as node postprocessor.

    ``llm`` defaults to LlamaIndex's ``Settings.llm``; pass ``response_mode="no_text"`` for retrieval only.
    Extra keyword arguments go to ``RetrieverQueryEngine.from_args`` (``response_mode``, ``streaming``, ...).
    """
    postprocessors = [*engine_kwargs.pop("node_postprocessors", []), build_reranker(settings)]
    return RetrieverQueryEngine.from_args(
        build_retriever(settings, embed_model=embed_model, filters=filters),
        llm=llm,
        node_postprocessors=postprocessors,
        **engine_kwargs,
    )


__all__ = [
    "TwoStageRetriever",
    "build_query_engine",
    "build_reranker",
    "build_retriever",
    "build_two_stage_retriever",
]
