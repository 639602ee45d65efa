"""``evaluate``: run both stages over a labelled dataset and measure what each contributes.

The corpus goes through the normal ingestion of a :class:`~llama_index_twostage.pipeline.TwoStagePipeline`, one
node per document (as BEIR evaluates), into a collection named after the dataset and the embedding model, so a second
run embeds nothing; that collection is searched near-exhaustively (:data:`EVAL_EF_SEARCH`). Each query then runs
stage 1 once at the largest swept recall_k, and the pipeline's own reranker ranks it at every sweep point (see
:mod:`llama_index_twostage.evaluation.sweep`): what is measured is the pipeline as configured, cascade included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from llama_index_twostage.evaluation.datasets import RetrievalDataset
from llama_index_twostage.evaluation.report import EvaluationReport, build_report
from llama_index_twostage.evaluation.sweep import sweep_points
from llama_index_twostage.evaluation.traces import QueryTrace
from llama_index_twostage.models import ModelPool
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.pipeline import TwoStagePipeline
from llama_index_twostage.settings import RetrieverSettings, Stage1Mode
from llama_index_twostage.stage1 import found_by
from llama_index_twostage.stage2 import CrossEncoderRerank, ScoreCache
from llama_index_twostage.store import model_identity
from llama_index_twostage.timing import Stopwatch

if TYPE_CHECKING:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import NodeWithScore

WHOLE_DOCUMENT_CHUNK = 100_000
"""Tokens per chunk large enough that every benchmark document stays one node, as in BEIR."""

EVAL_EF_SEARCH = 1000
"""HNSW search breadth of evaluation collections. At Chroma's default (100) the approximate search costs
all-MiniLM-L6-v2 0.003 nDCG@10 on SciFact (0.6417 vs 0.6451 exact); at 1000 stage 1 equals exact search on
benchmark-sized corpora, so its figures compare with published ones and measure the model, not the index."""


def collection_name(dataset_name: str, embed_model: str) -> str:
    """``eval-<dataset>-<model>`` made to fit Chroma's naming rules (3-512 of [a-zA-Z0-9._-], alphanumeric ends)."""
    raw = f"eval-{dataset_name}-{model_identity(embed_model)}"
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^a-zA-Z0-9._-]+", "-", raw))
    return name[:512].rstrip("._-")


def evaluation_settings(dataset: RetrievalDataset, settings: RetrieverSettings) -> RetrieverSettings:
    """The settings with the dataset's own collection and one node per document."""
    return settings.replace(
        collection=collection_name(dataset.name, settings.embed_model),
        chunk_size=WHOLE_DOCUMENT_CHUNK,
        chunk_overlap=0,
        splitter="sentence",  # whatever the settings say: the qrels judge whole documents
        hnsw_ef_search=EVAL_EF_SEARCH,
    )


def _in_stage1_order(nodes: list[NodeWithScore]) -> list[NodeWithScore]:
    return sorted(nodes, key=lambda scored: stage_info(scored)["stage1_rank"])


def _doc_id(scored: NodeWithScore) -> str:
    return scored.node.ref_doc_id or scored.node.node_id


def trace_query(
    query_id: str,
    query: str,
    retriever: BaseRetriever,
    reranker: CrossEncoderRerank,
    points: Sequence[int],
) -> QueryTrace:
    """Stage 1 once at the largest recall_k, then the reranker's own ranking at each sweep point.

    ``reranker`` should look scores up in a cache that holds the whole sweep (see :func:`evaluate`), so that each
    point scores only the candidates it adds.
    """
    nodes = _in_stage1_order(retriever.retrieve(query))
    rankings: dict[int, list[str]] = {}
    pairs: dict[int, int] = {}
    stage2_ms: dict[int, float] = {}
    elapsed = 0.0
    for point in points:
        with Stopwatch() as watch:
            ranking = reranker.rank(query, nodes[:point])
        elapsed += watch.ms
        rankings[point] = [_doc_id(scored) for scored in ranking.nodes]
        pairs[point] = ranking.info["pairs_scored"]
        stage2_ms[point] = elapsed
    return QueryTrace(
        query_id=query_id,
        candidates=[_doc_id(scored) for scored in nodes],
        rankings=rankings,
        pairs_scored=pairs,
        stage1_ms=float(stage_info(nodes[0])["stage1_ms"]) if nodes else 0.0,
        stage2_ms=stage2_ms,
        found_by={_doc_id(scored): found_by(stage_info(scored)) for scored in nodes},
    )


def evaluate(
    dataset: RetrievalDataset,
    settings: RetrieverSettings,
    *,
    sweep: Sequence[int] | None = None,
    limit: int | None = None,
    knee_tolerance: float = 0.005,
    reranker: CrossEncoderRerank | None = None,
    models: ModelPool | None = None,
) -> EvaluationReport:
    """Evaluate stage 1 alone and two-stage retrieval on ``dataset``, at ``settings.recall_k`` or at each ``sweep``.

    Args:
        dataset: corpus, queries and qrels (see :mod:`llama_index_twostage.evaluation.datasets`).
        settings: models, store, ``stage1_mode``, ``top_k`` and ``recall_k``; the collection is derived from the
            dataset.
        sweep: recall_k values to compare; the report's operating point is ``settings.recall_k`` when it is one of
            them, else the largest.
        limit: evaluate only the first N judged queries (the full corpus is still searched).
        knee_tolerance: nDCG@10 a smaller recall_k may lose against the best and still be recommended.
        reranker: a stage-2 reranker to evaluate instead of the one the settings describe.
        models: a pool to load models from (to share them with the caller).
    """
    mode = settings.stage1_mode
    reports = evaluate_stage1_modes(
        dataset,
        settings,
        [mode],
        sweep=sweep,
        limit=limit,
        knee_tolerance=knee_tolerance,
        reranker=reranker,
        models=models,
    )
    return reports[mode]


def evaluate_stage1_modes(
    dataset: RetrievalDataset,
    settings: RetrieverSettings,
    modes: Sequence[Stage1Mode],
    *,
    sweep: Sequence[int] | None = None,
    limit: int | None = None,
    knee_tolerance: float = 0.005,
    reranker: CrossEncoderRerank | None = None,
    models: ModelPool | None = None,
) -> dict[Stage1Mode, EvaluationReport]:
    """:func:`evaluate` once per stage-1 mode, on one ingestion and one reranker: only stage 1 differs, and a pair
    both modes hand the reranker is scored once."""
    points = sweep_points(sweep, default=settings.recall_k, top_k=settings.top_k)
    operating = settings.recall_k if settings.recall_k in points else points[-1]
    if limit is not None:
        dataset = dataset.limit(limit)
    eval_settings = evaluation_settings(dataset, settings)
    reports: dict[Stage1Mode, EvaluationReport] = {}
    with TwoStagePipeline(eval_settings, models=models) as pipeline:
        ingested = pipeline.ingest(list(dataset.corpus.values()))
        ranker = reranker or pipeline.reranker()
        # Room for every pair of the evaluation, cascade included: each pair is scored once whatever the user's cache.
        pairs = 2 * points[-1] * len(dataset.queries) * len(modes)
        sweep_ranker = ranker.with_score_cache(ScoreCache(max(1, pairs)))
        for mode in modes:
            retriever = pipeline.retriever(recall_k=points[-1], stage1_mode=mode)
            queries = tqdm(
                dataset.queries, desc=f"evaluating ({mode})", unit="query", disable=not settings.show_progress
            )
            traces = [trace_query(qid, dataset.queries[qid], retriever, sweep_ranker, points) for qid in queries]
            reports[mode] = build_report(
                traces,
                dataset.qrels,
                dataset=dataset.name,
                points=points,
                operating_recall_k=operating,
                top_k=ranker.top_k,
                knee_tolerance=knee_tolerance,
                settings=eval_settings.replace(stage1_mode=mode).to_dict(),
                ingest=ingested.to_dict(),
            )
    return reports
