"""Stage-1 and ingestion benchmark: what our retriever and ingestion add over their engines, and how Chroma scales.

1. Ingestion: ``ingest_documents`` docs/s vs raw batched ``SentenceTransformer.encode`` docs/s on the same texts.
2. Query latency on that collection, same queries, taking turns: ours (``ChromaRecallRetriever``) vs raw
   (``SentenceTransformer.encode`` of the query + ``collection.query``) vs LlamaIndex ``VectorIndexRetriever`` over
   ``ChromaVectorStore`` on the same collection.
3. Scale: raw Chroma p50 and recall@recall_k against exact search as the store grows (``--scales``), at each HNSW
   search breadth in ``--ef-search`` (the store is built once per size, then reopened with each breadth: a running
   process does not see a changed ``ef_search``). The vectors are SciFact's real document embeddings plus
   noise-perturbed, unit-normalised copies of them (synthetic: they say how HNSW behaves at that size, not what
   SciFact would retrieve).

    python benchmarks/bench_stage1.py --corpus-size 1000 --scales 10000,100000,1000000 --ef-search 100,500,1000
    python benchmarks/bench_stage1.py --sections latency      # only the stage-1 latency comparison
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import chromadb
import numpy as np
from bench_anchor_quality import corpus_subset
from bench_rerank import data_parser, percentile
from chromadb.api.client import SharedSystemClient
from chromadb.api.models.Collection import Collection
from llama_index.core import VectorStoreIndex
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.vector_stores.chroma import ChromaVectorStore
from sentence_transformers import SentenceTransformer

from llama_index_twostage import ModelPool, RetrieverSettings, TwoStagePipeline
from llama_index_twostage.evaluation import load_beir
from llama_index_twostage.evaluation.runner import WHOLE_DOCUMENT_CHUNK
from llama_index_twostage.timing import Stopwatch


def parse_args() -> argparse.Namespace:
    parser = data_parser(__doc__, limit=50)
    parser.add_argument("--corpus-size", type=int, default=500, help="documents ingested (0: the whole corpus)")
    parser.add_argument("--scales", default="10000,100000", help="stored vectors per scale run (comma-separated)")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the noise added to synthetic copies")
    parser.add_argument("--ef-search", default="100,1000", help="HNSW search breadths of the scale runs")
    parser.add_argument("--max-neighbors", type=int, default=None, help="HNSW links per vector (unset: Chroma's)")
    parser.add_argument("--ef-construction", type=int, default=None, help="HNSW build breadth (unset: Chroma's)")
    parser.add_argument("--sections", default="ingestion,latency,scale", help="which parts to run (comma-separated)")
    return parser.parse_args()


def ingestion(
    documents: list, settings: RetrieverSettings, encoder: SentenceTransformer, models: ModelPool, rounds: int = 2
) -> None:
    """docs/s of raw encode and of ours, taking turns ``rounds`` times (ours into a fresh collection each time, the
    last being the one the latency section reads), so a change in background load hits both alike."""
    texts = [document.text for document in documents]
    raw_ms, our_ms = 0.0, 0.0
    for round_ in range(rounds, 0, -1):
        with Stopwatch() as raw:
            encoder.encode(texts, batch_size=settings.embed_batch_size, normalize_embeddings=True)
        target = settings if round_ == 1 else settings.model_copy(update={"collection": f"ingest-round-{round_}"})
        with TwoStagePipeline(target, models=models) as pipeline:
            _ = pipeline.embed_model  # loaded once for all rounds, before timing (raw encode's model is loaded too)
            with Stopwatch() as ours:
                pipeline.ingest(documents)
        raw_ms, our_ms = raw_ms + raw.ms, our_ms + ours.ms
    raw_rate, our_rate = rounds * len(texts) / raw_ms * 1000, rounds * len(texts) / our_ms * 1000
    print(
        f"ingestion ({rounds} rounds): raw encode {raw_rate:.1f} docs/s, ours {our_rate:.1f} docs/s, "
        f"ours/raw {our_rate / raw_rate:.2f}"
    )


def latencies(pipelines: dict[str, Callable[[str], object]], queries: list[str]) -> dict[str, list[float]]:
    """ms per query for each pipeline, taking turns; one warm-up query each."""
    for pipeline in pipelines.values():
        pipeline(queries[0])
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for query in queries:
        for name, pipeline in pipelines.items():
            with Stopwatch() as watch:
                pipeline(query)
            times[name].append(watch.ms)
    return times


def query_latency(
    settings: RetrieverSettings, encoder: SentenceTransformer, models: ModelPool, queries: list[str]
) -> None:
    pipeline = TwoStagePipeline(settings, models=models)
    collection = pipeline.store.open_collection()
    ours = pipeline.retriever()
    embed = HuggingFaceEmbedding(model_name=settings.embed_model)
    stock = VectorStoreIndex.from_vector_store(ChromaVectorStore(chroma_collection=collection), embed_model=embed)
    stock_retriever = stock.as_retriever(similarity_top_k=settings.recall_k)

    def raw(query: str) -> object:
        vector = encoder.encode([query], normalize_embeddings=True)
        return collection.query(query_embeddings=vector, n_results=settings.recall_k)

    times = latencies({"raw": raw, "ours": ours.retrieve, "llamaindex": stock_retriever.retrieve}, queries)
    base = statistics.median(times["raw"])
    for name, values in times.items():
        p50 = statistics.median(values)
        print(f"stage 1 {name:>10}: p50 {p50:.1f} ms, p95 {percentile(values, 95):.1f} ms, p50/raw {p50 / base:.2f}")


def synthetic(vectors: np.ndarray, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``size`` unit vectors: the real ones, then noisy copies of them."""
    picks = rng.integers(0, len(vectors), size - len(vectors))
    copies = vectors[picks] + rng.normal(0, noise, (len(picks), vectors.shape[1])).astype(np.float32)
    stacked = np.vstack([vectors, copies])
    return stacked / np.linalg.norm(stacked, axis=1, keepdims=True)


def build_store(vectors: np.ndarray, path: Path, build: dict[str, int]) -> float:
    """A persistent collection of ``vectors`` (ids are row numbers); returns the build time in seconds."""
    client = chromadb.PersistentClient(str(path))
    collection = client.create_collection("scale", configuration={"hnsw": {"space": "cosine", **build}})
    batch = client.get_max_batch_size()
    with Stopwatch() as watch:
        for start in range(0, len(vectors), batch):
            chunk = vectors[start : start + batch]
            collection.add(ids=[str(start + i) for i in range(len(chunk))], embeddings=chunk)
    return watch.ms / 1000


def reopened(path: Path, ef_search: int) -> Collection:
    """The stored collection searching at ``ef_search``, through a fresh client so the index reloads with it."""
    stored = chromadb.PersistentClient(str(path)).get_collection("scale")
    stored.modify(configuration={"hnsw": {"ef_search": ef_search}})
    SharedSystemClient.clear_system_cache()
    return chromadb.PersistentClient(str(path)).get_collection("scale")


def scale_rows(
    vectors: np.ndarray, query_vectors: np.ndarray, recall_k: int, breadths: list[int], build: dict[str, int]
) -> list[str]:
    """One table row per search breadth: p50/p95 ms and mean recall@recall_k against exact search."""
    exact = [set(np.argpartition(-(vectors @ vector), recall_k)[:recall_k].tolist()) for vector in query_vectors]
    path = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    build_s = build_store(vectors, path, build)
    built = f"{build.get('max_neighbors', 'default')} / {build.get('ef_construction', 'default')}"
    rows = []
    for ef_search in breadths:
        collection = reopened(path, ef_search)
        times, recalls = [], []
        for vector, truth in zip(query_vectors, exact):
            with Stopwatch() as watch:
                found = collection.query(query_embeddings=vector[None, :], n_results=recall_k, include=[])
            times.append(watch.ms)
            recalls.append(len(truth & {int(i) for i in found["ids"][0]}) / recall_k)
        rows.append(
            f"| {len(vectors):,} | {built} | {ef_search} | {statistics.median(times):.1f} | "
            f"{percentile(times, 95):.1f} | {statistics.mean(recalls):.3f} | {build_s:.0f} |"
        )
        print(rows[-1], flush=True)
    SharedSystemClient.clear_system_cache()
    shutil.rmtree(path, ignore_errors=True)
    return rows


def main() -> None:
    args = parse_args()
    sections = set(args.sections.split(","))
    dataset = load_beir(args.data).limit(args.limit)
    documents = corpus_subset(dataset, args.corpus_size)
    queries = list(dataset.queries.values())
    settings = RetrieverSettings(
        embed_model=args.embed_model,
        persist_dir=Path(tempfile.mkdtemp(prefix="bench-stage1-")),
        collection="bench-stage1",
        recall_k=min(args.recall_k, len(documents)),
        chunk_size=WHOLE_DOCUMENT_CHUNK,
        chunk_overlap=0,
        show_progress=False,
    )
    encoder = SentenceTransformer(args.embed_model)
    print(f"{len(documents)} SciFact documents, {len(queries)} test queries, recall_k={settings.recall_k}")
    models = ModelPool()
    if sections & {"ingestion", "latency"}:
        ingestion(documents, settings, encoder, models)
    if "latency" in sections:
        query_latency(settings, encoder, models, queries)
    if "scale" in sections:
        real = encoder.encode([document.text for document in documents], normalize_embeddings=True)
        query_vectors = encoder.encode(queries, normalize_embeddings=True)
        rng = np.random.default_rng(0)
        print(f"scale (real SciFact embeddings + noisy unit-normalised copies, noise std {args.noise}):")
        print("| stored vectors | M / ef_construction | ef_search | p50 ms | p95 ms | recall@k vs exact | build s |")
        print("|---|---|---|---|---|---|---|")
        breadths = [int(value) for value in args.ef_search.split(",") if value]
        build = {"max_neighbors": args.max_neighbors, "ef_construction": args.ef_construction}
        build = {key: value for key, value in build.items() if value is not None}
        for size in (int(value) for value in args.scales.split(",") if value):
            vectors = synthetic(real, max(size, len(real)), args.noise, rng)
            scale_rows(vectors, query_vectors, args.recall_k, breadths, build)


if __name__ == "__main__":
    main()
