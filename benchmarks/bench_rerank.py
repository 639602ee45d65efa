"""Stage-2 benchmark: our reranker per backend (``auto`` first) against LlamaIndex's SentenceTransformerRerank and the
peers users would pick instead (LangChain, Haystack, rerankers: the ``bench`` extra), in one process.

Every reranker reads the same candidates: the ``recall_k`` nearest documents of each SciFact test query by exact
bi-encoder search over a corpus subset (the queries' relevant documents plus the first ``--corpus-size``
documents), all at the stock reranker's 512-token window, on the same model. Rerankers take turns per query so
background load hits them alike; each answers one warm-up query first (model loading, ONNX export, ``auto``'s
calibration). Ours run with the score cache off, so every pair is really scored; a last pass shows what the cache
saves on repeats. Each row is compared with ours fp32 (``torch``): top-10 set overlap and same top-1, the
tolerance ``auto`` holds a backend to. The header names the CPU and the flags that decide the speed of each backend.

    pip install -e ".[bench]"
    python benchmarks/bench_rerank.py --limit 21 --recall-k 50
    python benchmarks/bench_rerank.py --device cuda --backends torch,torch-fp16 --batch-sizes 32,128,512 --peers ""
    python benchmarks/bench_rerank.py --backends torch,http --peers "" --cascade-k 0 --window-lengths "" --clients 1,8

The second form is the GPU comparison: fp32 against fp16, each at every batch size, to find where pairs/s stops
growing (the saturating batch size). The ``--window-lengths`` rows read the candidates through a short window,
truncated or as max-pooled windows (``rerank_long_documents="max-window"``): what reading whole documents costs.

The third puts stage 2 on a rerank server (``http``): the given ``--rerank-url``, or an Infinity server it starts
from ``.venv-infinity`` (``scripts/setup_infinity.sh``) on the same model, beside the in-process backends; then
``--clients`` concurrent async clients per backend (the server batches their requests together; a local backend
runs each in a worker thread) for throughput. With ``--replicas 2`` it starts two servers, and an http row on both
(a query's requests, 8 documents each, spread across them) stands beside the row on one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import peers
import torch
from bench_anchor_quality import SHARED, STOCK_MAX_LENGTH, corpus_subset
from llama_index.core.schema import Document, NodeWithScore, TextNode
from loopback import LocalInfinityServer
from sentence_transformers import SentenceTransformer

from llama_index_twostage import (
    CrossEncoderRerank,
    CrossEncoderScorer,
    HttpRerankScorer,
    ModelPool,
    PairScorer,
    ScoreCache,
)
from llama_index_twostage.evaluation import evaluate_run, load_beir
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.stage2.auto import Agreement, Hardware
from llama_index_twostage.timing import Stopwatch

TOP_K = 10  # nDCG@10 reads a full list
HTTP_DOCUMENTS = 8  # per rerank request: a query's requests spread across replicas
Rank = Callable[[list[NodeWithScore], str], tuple[list[str], int]]
"""A reranker under test: (candidates, query) -> (its top doc ids, best first; the pairs it read)."""
PEERS = {
    "stock": ("LlamaIndex SentenceTransformerRerank (stock)", peers.llamaindex_stock),
    "langchain": ("LangChain CrossEncoderReranker", peers.langchain),
    "haystack": ("Haystack SentenceTransformersSimilarityRanker", peers.haystack),
    "rerankers": ("rerankers (AnswerDotAI) cross-encoder", peers.answerdotai_rerankers),
}
STOCK = PEERS["stock"][0]
REPO = Path(__file__).resolve().parents[1]


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
    parser.add_argument(
        "--backends",
        default="torch,torch-bf16,onnx,onnx-int8,openvino,openvino-bf16,openvino-int8",
        help="comma-separated; torch is the reference (auto always runs, as the first row)",
    )
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {','.join(PEERS)} ('' for none)")
    parser.add_argument("--cascade-k", type=int, default=30, help="shortlist of the cascade rows (0: no cascade)")
    parser.add_argument("--model-cache-dir", type=Path, default=Path(".twostage/models"))
    parser.add_argument("--device", default=None, help="torch device of every reranker (default: automatic)")
    parser.add_argument("--batch-sizes", default="32", help="pairs per forward pass; several make a row each")
    parser.add_argument(
        "--window-lengths",
        default="128",
        help="short windows to compare long-document modes at: a row each for 'truncate' and 'max-window' ('': none)",
    )
    parser.add_argument(
        "--rerank-url",
        default=None,
        help="the http backend's server, or comma-separated replicas (default: start Infinity)",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="Infinity servers to start: the http rows use one, and all of them"
    )
    parser.add_argument("--infinity", type=Path, default=REPO / ".venv-infinity" / "bin" / "infinity_emb")
    parser.add_argument("--clients", default="", help="concurrent clients of the throughput rows, e.g. 1,8 ('': none)")
    args = parser.parse_args()
    if "auto" in args.backends.split(","):
        parser.error("--backends: leave auto out, it always runs (the first row, 'ours auto (default)')")
    return args


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


@contextlib.contextmanager
def rerank_servers(args: argparse.Namespace) -> Iterator[list[str]]:
    """The http backend's replicas: ``--rerank-url``, or ``--replicas`` Infinity servers started here on
    ``--rerank-model`` (none when no row needs one)."""
    if "http" not in args.backends.split(","):
        yield []
        return
    if args.rerank_url:
        yield args.rerank_url.split(",")
        return
    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as running:
        started = time.perf_counter()
        servers = []
        for _ in range(args.replicas):
            servers.append(LocalInfinityServer(args.infinity, Path(args.rerank_model), Path(logs)))
            servers[-1].start(timeout_s=300)
            running.callback(servers[-1].stop)
        urls = [server.rerank_url for server in servers]
        print(f"{len(servers)} Infinity server(s) up in {time.perf_counter() - started:.1f} s at {', '.join(urls)}")
        yield urls


def our_rows(args: argparse.Namespace, urls: list[str], pool: ModelPool) -> dict[str, CrossEncoderRerank]:
    """Ours: ``auto``, each backend (at each batch size; ``http`` on one server, and on all of them), the cascades and
    the long-document rows."""

    def server(replicas: list[str]) -> PairScorer:
        """The server reads with the model's own window (512 here); 8 documents a request, so that a query's requests
        can spread across replicas; closed with the pool."""
        return pool.get(
            ("http", *replicas),
            lambda: HttpRerankScorer(replicas, model="reranker", timeout_s=120.0, max_documents=HTTP_DOCUMENTS),
        )

    def scorer(backend: str = "torch", max_length: int = STOCK_MAX_LENGTH, batch_size: int = 32) -> PairScorer:
        if backend == "http":
            return server(urls[:1])
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
    rows = {"ours auto (default)": CrossEncoderRerank(scorer("auto"), top_k=TOP_K)}
    for backend in args.backends.split(","):
        for size in sizes:
            name = f"ours {backend}" + (f" batch {size}" if len(sizes) > 1 else "")
            rows[name] = CrossEncoderRerank(scorer(backend, batch_size=size), top_k=TOP_K)
    if len(urls) > 1:
        rows[f"ours http ({len(urls)} servers)"] = CrossEncoderRerank(server(urls), top_k=TOP_K)
    if args.cascade_k:
        for cheap_backend in ("torch", "onnx-int8"):
            rows[f"ours torch <- {cheap_backend}@128 top {args.cascade_k}"] = CrossEncoderRerank(
                scorer(), top_k=TOP_K, cascade_scorer=scorer(cheap_backend, max_length=128), cascade_k=args.cascade_k
            )
    for length in [int(length) for length in args.window_lengths.split(",") if length]:
        for mode in ("truncate", "max-window"):
            rows[f"ours torch@{length} {mode}"] = CrossEncoderRerank(
                scorer(max_length=length), top_k=TOP_K, long_documents=mode
            )
    return rows


def rows(args: argparse.Namespace, ours: dict[str, CrossEncoderRerank]) -> dict[str, Rank]:
    """Stock and the peers (those installed), then ours; every row returns (doc ids best first, pairs read)."""
    run: dict[str, Rank] = {}
    for name in [peer for peer in args.peers.split(",") if peer]:
        label, make = PEERS[name]
        try:
            rank_ids = make(args.rerank_model, TOP_K, args.device)
        except ImportError as error:
            print(f"(skipping {label}: {error}; pip install -e '.[bench]')")
            continue
        run[label] = lambda nodes, query, rank_ids=rank_ids: (rank_ids(nodes, query), len(nodes))
    for name, reranker in ours.items():
        run[name] = lambda nodes, query, reranker=reranker: ranked_by_us(reranker, nodes, query)
    return run


def ranked_by_us(reranker: CrossEncoderRerank, nodes: list[NodeWithScore], query: str) -> tuple[list[str], int]:
    top = reranker.postprocess_nodes(nodes, query_str=query)
    info = stage_info(top[0])
    return [scored.node.node_id for scored in top], info["pairs_scored"] + info.get("cascade_pairs_scored", 0)


@dataclass
class Measured:
    ms: list[float]
    pairs: int
    rankings: dict[str, list[str]]


def measure(
    run: dict[str, Rank], found: dict[str, list[NodeWithScore]], queries: dict[str, str]
) -> dict[str, Measured]:
    """Every query through every reranker, taking turns; the first query once more beforehand as warm-up."""
    first = next(iter(queries))
    for rank in run.values():
        rank(found[first], queries[first])
    results = {name: Measured([], 0, {}) for name in run}
    for query_id, query in queries.items():
        for name, rank in run.items():
            with Stopwatch() as watch:
                ids, pairs = rank(found[query_id], query)
            results[name].ms.append(watch.ms)
            results[name].pairs += pairs
            results[name].rankings[query_id] = ids
    return results


def cache_pass(args: argparse.Namespace, found: dict[str, list[NodeWithScore]], queries: dict[str, str]) -> str:
    """Queries asked twice through a cached reranker: how many pairs the repeat scores, and its p50."""
    backend = "auto"
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


async def throughput(
    reranker: CrossEncoderRerank, found: dict[str, list[NodeWithScore]], queries: dict[str, str], clients: int
) -> tuple[float, float]:
    """Every query once per client, ``clients`` at a time through ``arerank``: pairs/s and p50 ms per query."""
    work = [(query_id, query) for query_id, query in queries.items()] * clients
    ms: list[float] = []
    pairs = 0

    async def client(index: int) -> None:
        nonlocal pairs
        for query_id, query in work[index::clients]:
            with Stopwatch() as watch:
                top = await reranker.arerank(found[query_id], query)
            ms.append(watch.ms)
            pairs += stage_info(top[0])["pairs_scored"]

    with Stopwatch() as wall:
        await asyncio.gather(*(client(index) for index in range(clients)))
    return pairs / (wall.ms / 1000), statistics.median(ms)


def throughput_rows(
    args: argparse.Namespace,
    ours: dict[str, CrossEncoderRerank],
    found: dict[str, list[NodeWithScore]],
    queries: dict[str, str],
) -> None:
    """Each backend of ``--backends`` under each ``--clients`` count of concurrent clients (score cache off)."""
    rerankers = {name: ours[f"ours {name}"] for name in args.backends.split(",") if f"ours {name}" in ours}
    print("\n| backend | clients | pairs/s | p50 ms per query |\n|---|---|---|---|")
    for name, reranker in rerankers.items():
        for clients in [int(count) for count in args.clients.split(",")]:
            pairs_per_s, p50 = asyncio.run(throughput(reranker, found, queries, clients))
            print(f"| {name} | {clients} | {pairs_per_s:.1f} | {p50:.0f} |")


def agreement_with(reference: dict[str, list[str]], rankings: dict[str, list[str]]) -> Agreement:
    """Top-10 set overlap and same top-1 against ``reference`` (ours fp32), the tolerance ``auto`` applies."""
    overlaps = [len(set(rankings[q][:TOP_K]) & set(ids[:TOP_K])) / len(ids[:TOP_K]) for q, ids in reference.items()]
    same = sum(rankings[q][0] == ids[0] for q, ids in reference.items())
    return Agreement(sum(overlaps) / len(overlaps), same, len(overlaps))


def report(results: dict[str, Measured], qrels: dict[str, dict[str, int]]) -> dict[str, tuple[float, Agreement]]:
    """The table; returns each row's p50 and agreement with ours fp32."""
    stock = statistics.median(results[STOCK].ms) if STOCK in results else None
    reference = results["ours torch"].rankings
    print(
        "| reranker | pairs/query | pairs/s | p50 ms | p95 ms | p50 / stock | top-10 overlap | same top-1 | nDCG@10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, measured in results.items():
        p50 = statistics.median(measured.ms)
        agreed = agreement_with(reference, measured.rankings)
        summary[name] = (p50, agreed)
        cells = [
            f"{measured.pairs / len(measured.ms):.0f}",
            f"{measured.pairs / (sum(measured.ms) / 1000):.1f}",
            f"{p50:.0f}",
            f"{percentile(measured.ms, 95):.0f}",
            f"{p50 / stock:.2f}" if stock else "-",
            f"{agreed.top_overlap:.3f}",
            f"{agreed.same_top1}/{agreed.queries}",
            f"{evaluate_run(measured.rankings, qrels)['ndcg@10']:.4f}",
        ]
        print(f"| {name} | {' | '.join(cells)} |")
    return summary


def auto_line(summary: dict[str, tuple[float, Agreement]], backends: list[str], choice: str) -> str:
    """What ``auto`` chose, and its p50 against the fastest backend that holds the tolerance on these queries."""
    holding = {
        b: summary[f"ours {b}"][0] for b in backends if f"ours {b}" in summary and summary[f"ours {b}"][1].passes
    }
    fastest = min(holding, key=holding.__getitem__)
    ratio = summary["ours auto (default)"][0] / holding[fastest]
    return (
        f"auto chose {choice}; fastest backend within the tolerance here: {fastest}; auto / fastest p50 = {ratio:.2f}"
    )


def cpu_header() -> str:
    cpu = Hardware.detect("cpu")
    name, flags = cpu.name, cpu.flags
    shown = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16", "avx512_vnni": "AVX512-VNNI", "avx512f": "AVX512F"}
    present = [label for flag, label in shown.items() if flag in flags]
    absent = [f"no {label}" for flag, label in shown.items() if flag not in flags]  # a Xeon may lack only AMX
    kernels = torch.backends.cpu.get_cpu_capability()  # what CPUID offers, so an emulated AVX2 CPU shows here
    emulated = " (emulated: benchmarks/cpu_isa/as_avx2.sh)" if "hide_avx512" in os.environ.get("LD_PRELOAD", "") else ""
    return (
        f"CPU: {name}, {torch.get_num_threads()} threads; {', '.join(present + absent)}; torch {torch.__version__} "
        f"({kernels} kernels){emulated}"
    )


def main() -> None:
    args = parse_args()
    logging.getLogger("llama_index_twostage.stage2.rerank").setLevel(logging.ERROR)  # the 512 window truncates a few
    dataset = load_beir(args.data).limit(args.limit)
    documents = corpus_subset(dataset, args.corpus_size)
    found = candidates(documents, dataset.queries, args.embed_model, args.recall_k)
    print(cpu_header())
    print(
        f"{len(dataset.queries)} SciFact test queries, {len(documents)} documents, recall_k={args.recall_k}, "
        f"window {STOCK_MAX_LENGTH} tokens, same candidates for every reranker"
    )
    with rerank_servers(args) as urls, contextlib.closing(ModelPool()) as pool:
        ours = our_rows(args, urls, pool)
        summary = report(measure(rows(args, ours), found, dataset.queries), dataset.qrels)
        if args.clients:
            throughput_rows(args, ours, found, dataset.queries)
    auto_scorer = CrossEncoderScorer.load(
        args.rerank_model,
        backend="auto",
        max_length=STOCK_MAX_LENGTH,
        device=args.device,
        cache_dir=args.model_cache_dir,
    )
    print(f"auto: {auto_scorer.backend_reason}")
    local = [backend for backend in args.backends.split(",") if backend != "http"]  # what auto may choose
    print(auto_line(summary, local, auto_scorer.backend))
    print(cache_pass(args, found, dataset.queries))


if __name__ == "__main__":
    main()
