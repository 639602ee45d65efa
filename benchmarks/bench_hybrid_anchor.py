"""Fewer candidates for the same recall: our hybrid two-stage pipeline against stock LlamaIndex at recall_k=100.

1. Calibrate on the train split (not the measured queries): the smallest recall_k at which our hybrid stage 1
   reaches the recall@100 of dense stage 1, over the same corpus.
2. Measure on the test split, queries alternating between pipelines, each warmed up first, all exact fp32 scores:
   stock LlamaIndex (``VectorStoreIndex`` over ``ChromaVectorStore`` on the collection our ingestion wrote, so the
   same vectors, + ``SentenceTransformerRerank``) at recall_k=100; ours dense at recall_k=100 (what our own
   overhead is); ours hybrid at the calibrated recall_k. Prints nDCG@10 and p50/p95 per query, and p50 / stock.

    python benchmarks/bench_hybrid_anchor.py --limit 20 --corpus-size 0 --persist-dir /tmp/hybrid-anchor
    # reuse `twostage eval`'s embeddings of SciFact:
    python benchmarks/bench_hybrid_anchor.py --persist-dir .twostage/chroma --collection eval-scifact-all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bench_anchor_quality import STOCK_MAX_LENGTH, Pipeline, chroma_folder, corpus_subset, print_table, run, stock
from bench_rerank import cpu_header, data_parser
from llama_index.core.schema import Document

from llama_index_twostage import ModelPool, RetrieverSettings, TwoStagePipeline
from llama_index_twostage.evaluation import RetrievalDataset, load_beir
from llama_index_twostage.evaluation.metrics import recall_curve
from llama_index_twostage.evaluation.runner import WHOLE_DOCUMENT_CHUNK

DEPTH = 100  # the stock pipeline's recall_k, and the recall ceiling hybrid is held to


def parse_args() -> argparse.Namespace:
    parser = data_parser(__doc__, limit=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--corpus-size", type=int, default=0, help="documents to ingest (0: the whole corpus)")
    parser.add_argument("--calibration-queries", type=int, default=200, help="train queries to pick recall_k on")
    parser.add_argument("--persist-dir", type=Path, default=None, help="Chroma folder (default: a fresh temp dir)")
    parser.add_argument(
        "--collection", default="hybrid-anchor", help="e.g. an evaluation's collection, to reuse its embeddings"
    )
    return parser.parse_args()


def matching_recall_k(pipeline: TwoStagePipeline, calibration: RetrievalDataset) -> tuple[int, float]:
    """The smallest recall_k at which hybrid's stage-1 recall reaches dense's recall@DEPTH on ``calibration``'s
    queries, and that recall."""
    curves = {}
    for mode in ("dense", "hybrid"):
        retriever = pipeline.retriever(recall_k=DEPTH, stage1_mode=mode)
        run_ = {qid: [n.node.ref_doc_id for n in retriever.retrieve(q)] for qid, q in calibration.queries.items()}
        curves[mode] = recall_curve(run_, calibration.qrels, DEPTH)
    target = curves["dense"][-1]
    matching = next((k for k, recall in enumerate(curves["hybrid"], 1) if recall >= target - 1e-12), DEPTH)
    return matching, target


def ours(pipeline: TwoStagePipeline, settings: RetrieverSettings, recall_k: int, mode: str) -> Pipeline:
    tuned = settings.model_copy(update={"recall_k": recall_k, "stage1_mode": mode})
    built = TwoStagePipeline(tuned, models=pipeline.models, store=pipeline.store, lexical=pipeline.lexical)
    return built.two_stage_retriever().retrieve


def main() -> None:
    args = parse_args()
    with chroma_folder(args.persist_dir, "hybrid-anchor-") as persist_dir:
        compare(args, persist_dir)


def compare(args: argparse.Namespace, persist_dir: Path) -> None:
    logging.getLogger("llama_index_twostage").setLevel(logging.ERROR)  # the 512 window truncates a few pairs
    test = load_beir(args.data).limit(args.limit)
    calibration = load_beir(args.data, split="train").limit(args.calibration_queries)
    documents: list[Document] = corpus_subset(test, args.corpus_size)
    settings = RetrieverSettings(
        embed_model=args.embed_model,
        rerank_model=args.rerank_model,
        persist_dir=persist_dir,
        collection=args.collection,
        top_k=args.top_k,
        recall_k=DEPTH,
        max_length=STOCK_MAX_LENGTH,
        rerank_backend="torch",  # exact fp32 scores, as the stock reranker computes them
        score_cache_size=0,  # every pair really scored
        chunk_size=WHOLE_DOCUMENT_CHUNK,
        chunk_overlap=0,
    )
    with TwoStagePipeline(settings, models=ModelPool()) as pipeline:
        pipeline.ingest(documents)
        recall_k, target = matching_recall_k(pipeline, calibration)
        print(cpu_header())
        print(
            f"{len(documents)} documents; calibrated on {len(calibration.queries)} train queries: hybrid "
            f"reaches dense recall@{DEPTH} ({target:.4f}) at recall_k={recall_k}; measured on {len(test.queries)} "
            f"test queries, top_k={args.top_k}, fp32 scores"
        )
        pipelines = {
            f"stock LlamaIndex, recall_k={DEPTH}": stock(documents, settings, pipeline.store.open_collection()),
            f"ours dense, recall_k={DEPTH}": ours(pipeline, settings, DEPTH, "dense"),
            f"ours hybrid, recall_k={recall_k}": ours(pipeline, settings, recall_k, "hybrid"),
        }
        rankings, times = run(pipelines, test.queries)
    print_table(rankings, times, test.qrels)


if __name__ == "__main__":
    main()
