"""Stage-2 benchmark: our reranker per backend (and cascade, and score cache) vs LlamaIndex's SentenceTransformerRerank.

Every reranker reads the same candidates in the same process: the ``recall_k`` nearest documents of each SciFact
test query by exact bi-encoder search over a corpus subset (the queries' relevant documents plus the first
``--corpus-size`` documents), all at the stock reranker's 512-token window. Rerankers take turns per query so
background load hits them alike; each answers one warm-up query first (model loading, ONNX export). Our rerankers
run with the score cache off, so every pair is really scored; a last pass shows what the cache saves on repeats.
The ``--window-lengths`` rows read the candidates through a short window, truncated or as max-pooled windows
(``rerank_long_documents="max-window"``): what reading whole documents costs, in pairs per query and time.

    python benchmarks/bench_rerank.py --limit 5 --recall-k 100
    python benchmarks/bench_rerank.py --device cuda --backends torch,torch-fp16 --batch-sizes 32,128,512 --cascade-k 0

The second form is the GPU comparison: fp32 against fp16, each at every batch size, to find where pairs/s stops
growing (the saturating batch size).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_anchor_quality import SHARED, STOCK_MAX_LENGTH, corpus_subset
from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.schema import Document, NodeWithScore, TextNode
from sentence_transformers import SentenceTransformer

from llama_index_twostage import CrossEncoderRerank, CrossEncoderScorer, ModelPool, ScoreCache
from llama_index_twostage.evaluation import evaluate_run, load_beir
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.timing import Stopwatch

TOP_K = 10  # nDCG@10 reads a full list
Rerank = Callable[[list[NodeWithScore], str], list[NodeWithScore]]


def data_parser(description: str | None, limit: int) -> argparse.ArgumentParser:
    """The flags every benchmark shares: data, models (defaulting to ../shared), query count and recall_k."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "scifact", help="BEIR folder")
    parser.add_argument("--embed-model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--rerank-model", default=str(SHARED / "models" / "twostage-test-reranker"))
    parser.add_argument("--limit", type=int, default=limit, help="first N judged test queries")
    parser.add_argument("--recall-k", type=int, default=100)
    return parser


def parse_args() -> argparse.Namespace:
    parser = data_parser(__doc__, limit=5)
    parser.add_argument("--corpus-size", type=int, default=500, help="documents searched (0: the whole corpus)")
    parser.add_argument("--backends", default="torch,torch-bf16,onnx,onnx-int8", help="comma-separated")
    parser.add_argument("--cascade-k", type=int, default=30, help="shortlist of the cascade rows (0: no cascade)")
    parser.add_argument("--model-cache-dir", type=Path, default=Path(".twostage/models"))
    parser.add_argument("--device", default=None, help="torch device of every reranker (default: automatic)")
    parser.add_argument("--batch-sizes", default="32", help="pairs per forward pass; several make a row each")
    parser.add_argument(
        "--window-lengths",
        default="128",
        help="short windows to compare long-document modes at: a row each for 'truncate' and 'max-window' ('': none)",
    )
    return parser.parse_args()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def as_node(document: Document) -> TextNode:
    return TextNode(
        id_=document.id_,
        text=document.text,
        metadata=document.metadata,
        excluded_embed_metadata_keys=document.excluded_embed_metadata_keys,
        excluded_llm_metadata_keys=document.excluded_llm_metadata_keys,
    )


def candidates(
    documents: list[Document], queries: dict[str, str], embed_model: str, recall_k: int
) -> dict[str, list[NodeWithScore]]:
    """Exact stage 1: each query's ``recall_k`` nearest documents by cosine, best first."""
    encoder = SentenceTransformer(embed_model)
    nodes = [as_node(document) for document in documents]
    corpus = encoder.encode([node.get_content(metadata_mode="embed") for node in nodes], normalize_embeddings=True)
    query_vectors = encoder.encode(list(queries.values()), normalize_embeddings=True)
    found = {}
    for query_id, vector in zip(queries, query_vectors):
        similarity = corpus @ vector
        best = np.argsort(-similarity)[:recall_k]
        found[query_id] = [NodeWithScore(node=nodes[index], score=float(similarity[index])) for index in best]
    return found


def rerankers(args: argparse.Namespace) -> dict[str, Rerank]:
    """The stock reranker, ours per backend, and the cascades (int8 or a 128-token window prunes for the full pass)."""
    stock = SentenceTransformerRerank(top_n=TOP_K, model=args.rerank_model, device=args.device)
    pool = ModelPool()

    def scorer(backend: str = "torch", max_length: int = STOCK_MAX_LENGTH, batch_size: int = 32) -> CrossEncoderScorer:
        return CrossEncoderScorer.load(
            args.rerank_model,
            backend=backend,  # type: ignore[arg-type]
            max_length=max_length,
            device=args.device,
            batch_size=batch_size,
            cache_dir=args.model_cache_dir,
            pool=pool,
        )

    sizes = [int(size) for size in args.batch_sizes.split(",")]
    ours = {
        f"ours {backend}" + (f" batch {size}" if len(sizes) > 1 else ""): CrossEncoderRerank(
            scorer(backend, batch_size=size), top_k=TOP_K
        )
        for backend in args.backends.split(",")
        for size in sizes
    }
    if args.cascade_k:
        cascades = {
            f"ours torch <- onnx-int8 top {args.cascade_k}": (scorer(), scorer("onnx-int8")),
            f"ours torch <- torch@128 top {args.cascade_k}": (scorer(), scorer(max_length=128)),
            f"ours torch-bf16 <- torch-bf16@128 top {args.cascade_k} (recommended)": (
                scorer("torch-bf16"),
                scorer("torch-bf16", max_length=128),
            ),
        }
        for name, (full, cheap) in cascades.items():
            ours[name] = CrossEncoderRerank(full, top_k=TOP_K, cascade_scorer=cheap, cascade_k=args.cascade_k)
    for length in [int(length) for length in args.window_lengths.split(",") if length]:
        for mode in ("truncate", "max-window"):
            ours[f"ours torch@{length} {mode}"] = CrossEncoderRerank(
                scorer(max_length=length), top_k=TOP_K, long_documents=mode
            )
    run: dict[str, Rerank] = {
        "stock SentenceTransformerRerank": lambda nodes, q: stock.postprocess_nodes(nodes, query_str=q)
    }
    for name, reranker in ours.items():
        run[name] = lambda nodes, q, reranker=reranker: reranker.postprocess_nodes(nodes, query_str=q)
    return run


@dataclass
class Measured:
    ms: list[float]
    pairs: int
    rankings: dict[str, list[str]]


def measure(
    run: dict[str, Rerank], found: dict[str, list[NodeWithScore]], queries: dict[str, str]
) -> dict[str, Measured]:
    """Every query through every reranker, taking turns; the first query once more beforehand as warm-up."""
    first = next(iter(queries))
    for rerank in run.values():
        rerank(found[first], queries[first])
    results = {name: Measured([], 0, {}) for name in run}
    for query_id, query in queries.items():
        for name, rerank in run.items():
            with Stopwatch() as watch:
                top = rerank(found[query_id], query)
            results[name].ms.append(watch.ms)
            results[name].pairs += stage_info(top[0]).get("pairs_scored", len(found[query_id]))
            results[name].rankings[query_id] = [scored.node.node_id for scored in top]
    return results


def cache_pass(args: argparse.Namespace, found: dict[str, list[NodeWithScore]], queries: dict[str, str]) -> str:
    """Queries asked twice through a cached reranker: how many pairs the repeat scores, and its p50."""
    backend = args.backends.split(",")[-1]
    scorer = CrossEncoderScorer.load(
        args.rerank_model,
        backend=backend,  # type: ignore[arg-type]
        max_length=STOCK_MAX_LENGTH,
        device=args.device,
        cache_dir=args.model_cache_dir,
    )
    reranker = CrossEncoderRerank(scorer, top_k=TOP_K, score_cache=ScoreCache(50_000))
    for query_id, query in queries.items():
        reranker.postprocess_nodes(found[query_id], query_str=query)
    ms, cached, pairs = [], 0, 0
    for query_id, query in queries.items():
        with Stopwatch() as watch:
            top = reranker.postprocess_nodes(found[query_id], query_str=query)
        ms.append(watch.ms)
        cached += stage_info(top[0])["pairs_cached"]
        pairs += stage_info(top[0])["pairs_scored"]
    p50 = statistics.median(ms)
    return f"score cache, repeated queries ({backend}): {cached}/{pairs} pairs from cache, p50 {p50:.1f} ms"


def report(results: dict[str, Measured], qrels: dict[str, dict[str, int]]) -> None:
    stock = statistics.median(next(iter(results.values())).ms)
    base = evaluate_run(results["ours torch"].rankings, qrels)["ndcg@10"] if "ours torch" in results else None
    print("| reranker | pairs/query | pairs/s | p50 ms | p95 ms | p50 / stock | nDCG@10 | vs ours torch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, measured in results.items():
        ndcg = evaluate_run(measured.rankings, qrels)["ndcg@10"]
        p50 = statistics.median(measured.ms)
        delta = f"{ndcg - base:+.4f}" if base is not None else "-"
        pairs_per_s = measured.pairs / (sum(measured.ms) / 1000)
        p95 = percentile(measured.ms, 95)
        per_query = measured.pairs / len(measured.ms)
        cells = [f"{per_query:.0f}", f"{pairs_per_s:.1f}", f"{p50:.0f}", f"{p95:.0f}", f"{p50 / stock:.2f}"]
        print(f"| {name} | {' | '.join(cells)} | {ndcg:.4f} | {delta} |")


def main() -> None:
    args = parse_args()
    logging.getLogger("llama_index_twostage.rerank").setLevel(logging.ERROR)  # the 512 window truncates a few pairs
    dataset = load_beir(args.data).limit(args.limit)
    documents = corpus_subset(dataset, args.corpus_size)
    found = candidates(documents, dataset.queries, args.embed_model, args.recall_k)
    print(
        f"{len(dataset.queries)} SciFact test queries, {len(documents)} documents, recall_k={args.recall_k}, "
        f"window {STOCK_MAX_LENGTH} tokens, same candidates for every reranker"
    )
    report(measure(rerankers(args), found, dataset.queries), dataset.qrels)
    print(cache_pass(args, found, dataset.queries))


if __name__ == "__main__":
    main()
