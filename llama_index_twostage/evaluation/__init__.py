"""Retrieval evaluation: benchmark loaders, BEIR-compatible metrics, and the two-stage evaluation report."""

from llama_index_twostage.evaluation.artifacts import write_comparison, write_report
from llama_index_twostage.evaluation.compare import Stage1Comparison, compare_stage1, parse_modes
from llama_index_twostage.evaluation.datasets import (
    DatasetError,
    RetrievalDataset,
    load_beir,
    load_beir_corpus,
    load_dataset,
    load_llamaindex_qa,
)
from llama_index_twostage.evaluation.diagnosis import DocDiagnosis, QueryDiagnosis
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
from llama_index_twostage.evaluation.report import EvaluationReport, SweepPoint, format_table
from llama_index_twostage.evaluation.runner import collection_name, evaluate, evaluate_stage1_modes
from llama_index_twostage.evaluation.sweep import parse_sweep
from llama_index_twostage.evaluation.traces import QueryTrace

__all__ = [
    "DatasetError",
    "DocDiagnosis",
    "EvaluationReport",
    "QueryDiagnosis",
    "QueryTrace",
    "Stage1Comparison",
    "SweepPoint",
    "collection_name",
    "compare_stage1",
    "evaluate",
    "evaluate_stage1_modes",
    "format_table",
    "parse_modes",
    "parse_sweep",
    "write_comparison",
    "write_report",
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
