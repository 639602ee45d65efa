"""Per-query diagnosis: where each relevant document went, and which stage lost it.

A relevant document is a ``hit`` when it ends in the final ``top_k``, ``lost_before_reranking`` when stage 1 did not
hand it to the reranker (ranked beyond recall_k, or not retrieved at all), and a ``reranker_miss`` when it was
delivered but the reranker left it below ``top_k`` (or its cascade or ``score_threshold`` set it aside). A query
takes the worst outcome of its relevant documents (lost before reranking, then reranker miss, then hit): the first
tells you to raise recall_k, the second that no recall_k will help.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from llama_index_twostage.evaluation.metrics import relevant_ranks
from llama_index_twostage.evaluation.traces import QueryTrace

HIT = "hit"
RERANKER_MISS = "reranker_miss"
LOST = "lost_before_reranking"
OUTCOMES = (HIT, RERANKER_MISS, LOST)
"""From best to worst; a query's outcome is the worst of its relevant documents'."""


@dataclass(frozen=True)
class DocDiagnosis:
    """One relevant document: stage-1 rank (None: beyond the largest recall_k retrieved), final rank (None: not
    delivered to the reranker at the evaluated recall_k, or set aside by its cascade or threshold), and which side
    of stage 1 found it (``dense``, ``lexical``, ``both``; None when neither did)."""

    doc_id: str
    stage1_rank: int | None
    final_rank: int | None
    outcome: str
    found_by: str | None = None


@dataclass(frozen=True)
class QueryDiagnosis:
    query_id: str
    outcome: str
    docs: list[DocDiagnosis]


def _outcome(stage1_rank: int | None, final_rank: int | None, recall_k: int, top_k: int) -> str:
    if stage1_rank is None or stage1_rank > recall_k:
        return LOST
    return HIT if final_rank is not None and final_rank <= top_k else RERANKER_MISS


def diagnose(trace: QueryTrace, relevance: Mapping[str, int], *, recall_k: int, top_k: int) -> QueryDiagnosis:
    """Stage-1 and final rank of each relevant document of one query at ``recall_k``, and the query's outcome."""
    stage1 = relevant_ranks(trace.stage1_ranking(), relevance)
    final = relevant_ranks(trace.two_stage_ranking(recall_k), relevance)
    docs = [
        DocDiagnosis(
            doc_id,
            stage1[doc_id],
            final[doc_id],
            _outcome(stage1[doc_id], final[doc_id], recall_k, top_k),
            trace.found_by.get(doc_id),
        )
        for doc_id in stage1
    ]
    worst = max((OUTCOMES.index(doc.outcome) for doc in docs), default=0)
    return QueryDiagnosis(trace.query_id, OUTCOMES[worst], docs)


def summarize(diagnoses: Iterable[QueryDiagnosis]) -> dict[str, dict[str, int]]:
    """Counts of queries and of relevant documents per outcome (every outcome present, zero included)."""
    diagnoses = list(diagnoses)
    queries = Counter(diagnosis.outcome for diagnosis in diagnoses)
    docs = Counter(doc.outcome for diagnosis in diagnoses for doc in diagnosis.docs)
    return {
        "queries": {outcome: queries[outcome] for outcome in OUTCOMES},
        "relevant_docs": {outcome: docs[outcome] for outcome in OUTCOMES},
    }
