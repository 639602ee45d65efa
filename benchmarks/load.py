"""Load test: N concurrent queries against a `chroma run` server on loopback, as a web service would send them.

Starts its own server in a temporary directory, ingests a SciFact subset, then keeps ``--concurrency`` queries
in flight (``aretrieve``) for ``--duration`` seconds or ``--max-requests`` requests, whichever comes first, and
prints throughput, p50/p95/p99 latency and the error count. The server is stopped on exit, errors included.

    python benchmarks/load.py --concurrency 32 --duration 30            # both stages
    python benchmarks/load.py --stage recall --concurrency 64           # stage 1 alone
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from llama_index.core.base.base_retriever import BaseRetriever
from loopback import LocalChromaServer

from llama_index_twostage import RetrieverSettings, build_retriever, build_two_stage_retriever, ingest_documents
from llama_index_twostage.evaluation.datasets import load_beir

SHARED = Path(__file__).resolve().parents[2] / "shared"


@dataclass
class Load:
    """What the workers share: the budget left and what they measured."""

    deadline: float
    requests_left: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def take(self) -> bool:
        if self.requests_left <= 0 or time.monotonic() >= self.deadline:
            return False
        self.requests_left -= 1
        return True


async def worker(retriever: BaseRetriever, queries: list[str], offset: int, load: Load) -> None:
    index = offset
    while load.take():
        started = time.perf_counter()
        try:
            await retriever.aretrieve(queries[index % len(queries)])
            load.latencies_ms.append((time.perf_counter() - started) * 1000)
        except Exception as error:  # a load test counts failures instead of stopping at the first
            load.errors[type(error).__name__] += 1
        index += 1


async def drive(retriever: BaseRetriever, queries: list[str], args: argparse.Namespace) -> tuple[Load, float]:
    await retriever.aretrieve(queries[0])  # load the models and open the collection before the clock starts
    started = time.monotonic()
    load = Load(deadline=started + args.duration, requests_left=args.max_requests)
    await asyncio.gather(*(worker(retriever, queries, i, load) for i in range(args.concurrency)))
    return load, time.monotonic() - started


def report(load: Load, elapsed_s: float, args: argparse.Namespace) -> str:
    done = len(load.latencies_ms)
    cuts = statistics.quantiles(load.latencies_ms, n=100, method="inclusive") if done > 1 else [float("nan")] * 99
    errors = sum(load.errors.values())
    return "\n".join(
        [
            f"stage={args.stage} concurrency={args.concurrency} docs={args.docs} recall_k={args.recall_k} "
            f"top_k={args.top_k}",
            f"requests: {done} ok, {errors} errors {dict(load.errors) or ''} in {elapsed_s:.1f}s",
            f"throughput: {done / elapsed_s:.2f} queries/s",
            f"latency ms: p50={cuts[49]:.0f} p95={cuts[94]:.0f} p99={cuts[98]:.0f} "
            f"max={max(load.latencies_ms, default=0):.0f}",
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds of load (upper bound).")
    parser.add_argument("--max-requests", type=int, default=500, help="Requests in all (upper bound).")
    parser.add_argument("--stage", choices=["both", "recall"], default="both")
    parser.add_argument("--docs", type=int, default=200, help="SciFact documents to ingest.")
    parser.add_argument("--recall-k", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--embed-model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--rerank-model", default=str(SHARED / "models" / "twostage-test-reranker"))
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "scifact")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    dataset = load_beir(args.data)
    queries = list(dataset.queries.values())
    with tempfile.TemporaryDirectory() as scratch, LocalChromaServer(Path(scratch) / "chroma") as server:
        settings = RetrieverSettings(
            collection="load",
            chroma_host=server.host,
            chroma_port=server.port,
            embed_model=args.embed_model,
            rerank_model=args.rerank_model,
            recall_k=args.recall_k,
            top_k=args.top_k,
            show_progress=False,
        )
        ingest_documents(list(dataset.corpus.values())[: args.docs], settings)
        retriever = build_two_stage_retriever(settings) if args.stage == "both" else build_retriever(settings)
        load, elapsed_s = asyncio.run(drive(retriever, queries, args))
    print(report(load, elapsed_s, args))


if __name__ == "__main__":
    main()
