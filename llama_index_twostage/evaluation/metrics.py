"""Ranking metrics with the standard pytrec_eval / BEIR definitions.

Pure-Python so results can be compared one-to-one with published BEIR numbers
without pulling in pytrec_eval.  Rankings are de-duplicated before scoring: the
first occurrence of a doc id counts and later duplicates are ignored, so a
retriever that returns the same node twice cannot inflate its score.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]
"""Query id -> doc id -> graded relevance; a grade > 0 means relevant."""

Run = Mapping[str, Sequence[str]]
"""Query id -> ranked doc ids, best first (first occurrence of a duplicate counts)."""


def _unique(ranked: Sequence[str]) -> Iterator[str]:
    """Yield doc ids in order, skipping repeats so each doc is scored once."""
    seen: set[str] = set()
    for doc_id in ranked:
        if doc_id not in seen:
            seen.add(doc_id)
            yield doc_id


def _top_k(ranked: Sequence[str], k: int) -> list[str]:
    """The first k distinct doc ids of a ranking."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top: list[str] = []
    for doc_id in _unique(ranked):
        if len(top) == k:
            break
        top.append(doc_id)
    return top


def _relevant(relevance: Mapping[str, int]) -> set[str]:
    """Doc ids judged relevant (grade > 0); zero/negative grades are non-relevant."""
    return {doc_id for doc_id, grade in relevance.items() if grade > 0}


def _dcg(grades: Sequence[int]) -> float:
    """DCG with exponential gain 2^rel - 1 and discount log2(rank + 1), rank from 1.

    trec_eval's ``ndcg_cut`` uses linear gain (rel); the two agree for binary
    qrels such as SciFact's and only differ for graded judgments.
    """
    return sum((2**grade - 1) / math.log2(rank + 1) for rank, grade in enumerate(grades, start=1) if grade > 0)


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """nDCG@k; the ideal ranking is the qrels' grades sorted descending, so
    relevant docs the run never retrieved still lower the score.  0.0 when the
    query has no relevant docs (nothing to normalise by)."""
    top = _top_k(ranked, k)
    ideal = _dcg(sorted(relevance.values(), reverse=True)[:k])
    if ideal == 0.0:
        return 0.0
    return _dcg([relevance.get(doc_id, 0) for doc_id in top]) / ideal


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant doc within the top k, else 0.0."""
    relevant = _relevant(relevance)
    for rank, doc_id in enumerate(_top_k(ranked, k), start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Fraction of relevant docs found in the top k.

    Returns 0.0 when the query has no relevant docs; such queries are
    undefined for recall and should normally be excluded by the caller
    (:func:`evaluate_run` does so).
    """
    top = _top_k(ranked, k)
    relevant = _relevant(relevance)
    if not relevant:
        return 0.0
    return len(relevant.intersection(top)) / len(relevant)


def relevant_ranks(ranked: Sequence[str], relevance: Mapping[str, int]) -> dict[str, int | None]:
    """1-based rank of every relevant doc in the (de-duplicated) ranking, or
    None if it was not retrieved; for diagnosing individual queries."""
    ranks = {doc_id: rank for rank, doc_id in enumerate(_unique(ranked), start=1)}
    return {doc_id: ranks.get(doc_id) for doc_id in sorted(_relevant(relevance))}


def recall_curve(run: Run, qrels: Qrels, depth: int) -> list[float]:
    """Mean recall@k for k = 1..depth over the judged queries with relevant docs: the recall ceiling a reranker
    gets at every recall_k, from one ranking per query."""
    curve = np.zeros(depth)
    judged = 0
    for query_id, relevance in qrels.items():
        relevant = _relevant(relevance)
        if not relevant:
            continue
        judged += 1
        ranks = [rank for rank in relevant_ranks(run.get(query_id, []), relevance).values() if rank is not None]
        found = np.bincount(np.minimum(np.asarray(ranks, dtype=int), depth + 1), minlength=depth + 2)[1 : depth + 1]
        curve += np.cumsum(found) / len(relevant)
    return (curve / max(judged, 1)).tolist()


def per_query_metrics(
    run: Run,
    qrels: Qrels,
    *,
    ndcg_k: int = 10,
    mrr_k: int = 10,
    recall_ks: Sequence[int] = (),
) -> dict[str, dict[str, float]]:
    """Metrics for every query in qrels with at least one relevant doc.

    Queries without relevant docs are skipped (metrics are undefined for them),
    a judged query absent from the run scores 0 (an empty ranking), and run
    queries that have no qrels are ignored.  Keys: ``ndcg@<ndcg_k>``,
    ``mrr@<mrr_k>`` and ``recall@<k>`` for each k in recall_ks.
    """
    results: dict[str, dict[str, float]] = {}
    for qid, relevance in qrels.items():
        if not _relevant(relevance):
            continue
        ranked = run.get(qid, ())
        scores = {
            f"ndcg@{ndcg_k}": ndcg_at_k(ranked, relevance, ndcg_k),
            f"mrr@{mrr_k}": mrr_at_k(ranked, relevance, mrr_k),
        }
        for k in recall_ks:
            scores[f"recall@{k}"] = recall_at_k(ranked, relevance, k)
        results[qid] = scores
    return results


def evaluate_run(
    run: Run,
    qrels: Qrels,
    *,
    ndcg_k: int = 10,
    mrr_k: int = 10,
    recall_ks: Sequence[int] = (),
) -> dict[str, float]:
    """Mean of :func:`per_query_metrics` over the judged queries (BEIR-style
    macro average); every key is 0.0 when no query has a relevant doc."""
    per_query = per_query_metrics(run, qrels, ndcg_k=ndcg_k, mrr_k=mrr_k, recall_ks=recall_ks)
    keys = [f"ndcg@{ndcg_k}", f"mrr@{mrr_k}", *(f"recall@{k}" for k in recall_ks)]
    n = len(per_query)
    return {key: (sum(scores[key] for scores in per_query.values()) / n if n else 0.0) for key in keys}
