"""Retrieval evaluation: benchmark loaders and BEIR-compatible metrics."""

from llama_index_twostage.evaluation.datasets import (
    DatasetError,
    RetrievalDataset,
    load_beir,
    load_beir_corpus,
    load_dataset,
    load_llamaindex_qa,
)
from llama_index_twostage.evaluation.metrics import (
    Qrels,
    Run,
    evaluate_run,
    mrr_at_k,
    ndcg_at_k,
    per_query_metrics,
    recall_at_k,
    relevant_ranks,
)

__all__ = [
    "DatasetError",
    "Qrels",
    "RetrievalDataset",
    "Run",
    "evaluate_run",
    "load_beir",
    "load_beir_corpus",
    "load_dataset",
    "load_llamaindex_qa",
    "mrr_at_k",
    "ndcg_at_k",
    "per_query_metrics",
    "recall_at_k",
    "relevant_ranks",
]
