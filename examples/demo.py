"""The main job: ingest a small SciFact corpus into the embedded Chroma store (and its BM25 index) and run
two-stage queries.

Stage 1 runs in the default mode, hybrid: bi-encoder and BM25 candidates fused by reciprocal rank. For each query
it prints the final top_k (stage-1 rank -> final rank, which side of stage 1 found it, both scores, per-stage
timings) and where every judged-relevant document went: promoted by the reranker, left below top_k, or lost before
reranking. Models come from settings (``TWOSTAGE_EMBED_MODEL``, ``TWOSTAGE_RERANK_MODEL``); scripts/demo.sh sets them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llama_index.core.schema import NodeWithScore

from llama_index_twostage import RetrieverSettings, TwoStagePipeline, stage_info
from llama_index_twostage.cli import format_results
from llama_index_twostage.evaluation import RetrievalDataset, load_beir
from llama_index_twostage.stage1 import found_by

READER_NOTE = (
    "note: on this machine the reranker is the local test cross-encoder (../shared/models/twostage-test-reranker),\n"
    "only about as good as the bi-encoder, so a reranked list here may look worse than stage 1's; with a hub\n"
    "reranker (TWOSTAGE_RERANK_MODEL=cross-encoder/ms-marco-MiniLM-L6-v2 or BAAI/bge-reranker-v2-m3) it reads better."
)


def demo_corpus(dataset: RetrievalDataset, extra_docs: int) -> list:
    """The judged documents of the chosen queries plus the first ``extra_docs`` others as distractors."""
    judged = {doc_id for relevance in dataset.qrels.values() for doc_id in relevance}
    distractors = [doc_id for doc_id in dataset.corpus if doc_id not in judged][:extra_docs]
    return [dataset.corpus[doc_id] for doc_id in [*sorted(judged), *distractors]]


def fate(doc_id: str, candidates: list[NodeWithScore], final: list[NodeWithScore], recall_k: int) -> str:
    """Where a relevant document went through the two stages."""
    info = next((stage_info(n) for n in candidates if n.node.ref_doc_id == doc_id), None)
    final_rank = next((stage_info(n)["final_rank"] for n in final if n.node.ref_doc_id == doc_id), None)
    if info is None:
        return f"relevant {doc_id}: lost before reranking (beyond recall_k={recall_k}); no reranker can recover it"
    found = f"stage-1 rank {info['stage1_rank']} (found by {found_by(info)})"
    if final_rank is None:
        return f"relevant {doc_id}: {found} -> below the final top_k (a reranker miss)"
    return f"relevant {doc_id}: {found} -> final rank {final_rank}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TWOSTAGE_DEMO_DATA", "data/scifact")))
    parser.add_argument("--queries", type=int, default=5, help="SciFact test queries to run.")
    parser.add_argument("--extra-docs", type=int, default=300, help="Distractor documents to ingest.")
    args = parser.parse_args()

    dataset = load_beir(args.data).limit(args.queries)
    settings = RetrieverSettings(collection="scifact-demo", recall_k=30, top_k=5)
    with TwoStagePipeline(settings) as pipeline:  # one store and one set of models for ingestion and queries
        report = pipeline.ingest(demo_corpus(dataset, args.extra_docs))
        added, kept = report.added, report.already_stored
        print(f"ingested {report.documents} documents: {added} chunks added, {kept} already stored")
        print(f"stage 1: {pipeline.describe_stage1()}")
        print(READER_NOTE)
        two_stage = pipeline.two_stage_retriever()
        for query_id, query in dataset.queries.items():
            candidates = two_stage.recall.retrieve(query)
            final = two_stage.rerank.postprocess_nodes(candidates, query_str=query)
            print(f"\nquery {query_id}: {query}")
            print(format_results(final))
            for doc_id in dataset.qrels[query_id]:
                print("  " + fate(doc_id, candidates, final, settings.recall_k))


if __name__ == "__main__":
    main()
