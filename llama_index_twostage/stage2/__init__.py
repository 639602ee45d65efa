"""Stage 2, precision: ``CrossEncoderRerank`` and the scorers it ranks with, their backends and caches."""

from llama_index_twostage.stage2.caches import CacheStats, LruCache, ScoreCache
from llama_index_twostage.stage2.http import HttpRerankScorer, RerankServerConfig
from llama_index_twostage.stage2.rerank import CascadeConfig, CrossEncoderRerank, Ranking
from llama_index_twostage.stage2.scorers import AsyncPairScorer, CrossEncoderScorer, OutputHead, PairScorer, TokenWindow
from llama_index_twostage.stage2.templates import PairTemplate

__all__ = [
    "AsyncPairScorer",
    "CacheStats",
    "CascadeConfig",
    "CrossEncoderRerank",
    "CrossEncoderScorer",
    "HttpRerankScorer",
    "LruCache",
    "OutputHead",
    "PairScorer",
    "PairTemplate",
    "Ranking",
    "RerankServerConfig",
    "ScoreCache",
    "TokenWindow",
]
