"""Stage-1 and ingestion benchmark: what our retriever and ingestion add over their engines, and how Chroma scales.

1. Ingestion: our docs/s writing both indexes (Chroma + BM25, the default) and Chroma alone, vs raw batched
   ``SentenceTransformer.encode`` docs/s on the same texts.
2. Query latency on that collection, same queries, taking turns: ours dense (``ChromaRecallRetriever``), ours
   hybrid (``HybridRecallRetriever``: dense + BM25, fused), the BM25 search alone, raw (``SentenceTransformer.encode``
   of the query + ``collection.query``) and LlamaIndex ``VectorIndexRetriever`` over ``ChromaVectorStore``.
3. Scale: raw Chroma p50 and recall@recall_k against exact search as the store grows (``--scales``), at each HNSW
   search breadth in ``--ef-search`` (the store is built once per size, then reopened with each breadth: a running
   process does not see a changed ``ef_search``). The vectors are SciFact's real document embeddings plus
   noise-perturbed, unit-normalised copies of them (synthetic: they say how HNSW behaves at that size, not what
   SciFact would retrieve).
5. Bi-encoder runtimes (``embed-backends``): ingestion docs/s of ours on each ``embed_backend`` (Chroma + BM25, the
   default) against LlamaIndex's own ingestion (``VectorStoreIndex.from_documents`` into ``ChromaVectorStore`` with a
   stock fp32 ``HuggingFaceEmbedding``, the same batch size and one chunk per document), taking turns; which one
   ``auto`` chose and why; and each runtime's search on SciFact against fp32's (exact top-N over the ingested
   documents, SciFact test queries, N = min(100, documents / 3)): does the calibration's tolerance hold there?
4. Lexical scale (``--lexical-scale``): a Chroma collection of that many chunks (SciFact's documents and embeddings,
   copied with a copy-number word added: synthetic) and its BM25 index built from Chroma as ``twostage reindex``
   does. Prints the rebuild time, index size on disk, process memory, the full reconcile (ids and doc hashes of
   both compared: ``verify --repair``), BM25 query p50, and dense vs hybrid stage-1 p50 at that size. Then the change
   feed at that size: the end-of-ingest step after a one-document change, and the work another host does to see a
   one-document change (and a deletion), each against the full reconcile as anchor.

    python benchmarks/bench_stage1.py --corpus-size 1000 --scales 10000,100000,1000000 --ef-search 100,500,1000
    python benchmarks/bench_stage1.py --sections latency      # only the stage-1 latency comparison
    python benchmarks/bench_stage1.py --sections lexical --lexical-scale 100000
    python benchmarks/bench_stage1.py --sections embed-backends --corpus-size 300 --limit 100
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
from bench_rerank import cpu_header, data_parser, percentile
from chromadb.api.client import SharedSystemClient
from chromadb.api.models.Collection import Collection
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.vector_stores.chroma import ChromaVectorStore
from sentence_transformers import SentenceTransformer

from llama_index_twostage import ModelPool, RetrieverSettings, TwoStagePipeline
from llama_index_twostage.embed_backends import Calibration, EmbedBackends, Embedded, search_agreement
from llama_index_twostage.evaluation import load_beir
from llama_index_twostage.evaluation.runner import WHOLE_DOCUMENT_CHUNK
from llama_index_twostage.ingest import Chunking, ingest_into
from llama_index_twostage.models import embedding_contract
from llama_index_twostage.store import ChromaStore, CollectionContract, LexicalFollower, find_drift
from llama_index_twostage.store.contract import HASH_KEY, SOURCE_KEY, STAMP_KEY
from llama_index_twostage.store.feed import stamp_now
from llama_index_twostage.timing import Stopwatch


def parse_args() -> argparse.Namespace:
    parser = data_parser(__doc__, limit=50)
    parser.add_argument("--corpus-size", type=int, default=500, help="documents ingested (0: the whole corpus)")
    parser.add_argument("--scales", default="10000,100000", help="stored vectors per scale run (comma-separated)")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the noise added to synthetic copies")
    parser.add_argument("--ef-search", default="100,1000", help="HNSW search breadths of the scale runs")
    parser.add_argument("--max-neighbors", type=int, default=None, help="HNSW links per vector (unset: Chroma's)")
    parser.add_argument("--ef-construction", type=int, default=None, help="HNSW build breadth (unset: Chroma's)")
    parser.add_argument("--lexical-scale", type=int, default=100_000, help="chunks of the lexical scale run")
    parser.add_argument(
        "--sections", default="ingestion,latency,scale,lexical", help="which parts to run (comma-separated)"
    )
    parser.add_argument(
        "--embed-backends",
        default="torch,torch-bf16,onnx,onnx-int8,openvino,openvino-bf16",
        help="rows of embed-backends",
    )
    parser.add_argument("--model-cache-dir", type=Path, default=Path(".twostage/models"))
    return parser.parse_args()


def ingestion(
    documents: list, settings: RetrieverSettings, encoder: SentenceTransformer, models: ModelPool, rounds: int = 2
) -> None:
    """docs/s of raw encode, of ours into Chroma alone and of ours into both indexes, taking turns ``rounds`` times
    (ours into fresh collections each time, the last being the one the latency section reads), so a change in
    background load hits all alike."""
    texts = [document.text for document in documents]
    spent = {"raw encode": 0.0, "ours, Chroma only": 0.0, "ours, Chroma + BM25": 0.0}
    for round_ in range(rounds, 0, -1):
        with Stopwatch() as raw:
            encoder.encode(texts, batch_size=settings.embed_batch_size, normalize_embeddings=True)
        spent["raw encode"] += raw.ms
        for name, lexical in (("ours, Chroma only", False), ("ours, Chroma + BM25", True)):
            last = round_ == 1 and lexical
            target = settings if last else settings.model_copy(update={"collection": f"ingest-{round_}-{lexical}"})
            with TwoStagePipeline(target, models=models) as pipeline:
                embed_model = pipeline.embed_model  # loaded before timing, as raw encode's model is
                with Stopwatch() as ours:
                    ingest_into(
                        pipeline.store,
                        embed_model,
                        documents,
                        chunking=Chunking(target.chunk_size, target.chunk_overlap),
                        show_progress=False,
                        lexical=pipeline.lexical if lexical else None,
                    )
            spent[name] += ours.ms
    rates = {name: rounds * len(texts) / ms * 1000 for name, ms in spent.items()}
    both, alone = rates["ours, Chroma + BM25"], rates["ours, Chroma only"]
    print(
        f"ingestion ({rounds} rounds): "
        + ", ".join(f"{name} {rate:.1f} docs/s" for name, rate in rates.items())
        + f"; both/Chroma only {both / alone:.2f}, both/raw {both / rates['raw encode']:.2f}"
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
    embed = HuggingFaceEmbedding(model_name=settings.embed_model)
    stock = VectorStoreIndex.from_vector_store(ChromaVectorStore(chroma_collection=collection), embed_model=embed)
    stock_retriever = stock.as_retriever(similarity_top_k=settings.recall_k)

    def raw(query: str) -> object:
        vector = encoder.encode([query], normalize_embeddings=True)
        return collection.query(query_embeddings=vector, n_results=settings.recall_k)

    contenders = {
        "raw": raw,
        "ours dense": pipeline.retriever(stage1_mode="dense").retrieve,
        "ours hybrid": pipeline.retriever(stage1_mode="hybrid").retrieve,
        "BM25 alone": lambda query: pipeline.lexical.search(query, settings.recall_k),
        "llamaindex": stock_retriever.retrieve,
    }
    print_latencies(latencies(contenders, queries), anchors=("raw", "ours dense"))


def print_latencies(times: dict[str, list[float]], anchors: tuple[str, ...]) -> None:
    """p50/p95 per contender and p50 ratios against both anchors."""
    base = {anchor: statistics.median(times[anchor]) for anchor in anchors}
    for name, values in times.items():
        p50 = statistics.median(values)
        ratios = ", ".join(f"p50/{anchor} {p50 / base[anchor]:.2f}" for anchor in anchors)
        print(f"stage 1 {name:>12}: p50 {p50:.1f} ms, p95 {percentile(values, 95):.1f} ms, {ratios}")


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


def rss_mb() -> float:
    """This process's resident memory, from /proc (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


def lexical_scale(
    size: int,
    documents: list,
    settings: RetrieverSettings,
    encoder: SentenceTransformer,
    models: ModelPool,
    queries: list[str],
) -> None:
    """Chroma with ``size`` synthetic chunks, its BM25 index rebuilt from it, and what that costs at query time."""
    texts = [document.text for document in documents]
    vectors = encoder.encode(texts, normalize_embeddings=True)
    scaled = settings.model_copy(update={"collection": "lexical-scale", "upsert_batch_size": 5000})
    with TwoStagePipeline(scaled, models=models) as pipeline:
        collection = pipeline.store.client.create_collection(
            "lexical-scale", configuration={"hnsw": {"space": "cosine"}}, metadata=contract_of(pipeline).to_metadata()
        )
        two_hours_ago = stamp_now() - 7200

        def written_at(row: int) -> float:
            """Written by earlier ingestions, spread over an hour that ended an hour ago."""
            return round(two_hours_ago + 3600 * row / size, 3)

        with Stopwatch() as chroma_build:
            for start in range(0, size, 5000):
                rows = range(start, min(start + 5000, size))
                collection.add(
                    ids=[f"chunk-{row}" for row in rows],
                    embeddings=vectors[[row % len(texts) for row in rows]],
                    documents=[f"{texts[row % len(texts)]} copy{row // len(texts)}" for row in rows],
                    metadatas=[
                        {HASH_KEY: f"hash-{row}", SOURCE_KEY: f"doc-{row}", STAMP_KEY: written_at(row)} for row in rows
                    ],
                )
        before = rss_mb()
        with Stopwatch() as rebuild_watch:
            pipeline.reindex()
        folder = pipeline.lexical.path
        on_disk = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6
        with Stopwatch() as drift_watch:
            drift = find_drift(pipeline.store, collection, pipeline.lexical, 5000)
        print(
            f"lexical scale ({size:,} synthetic chunks; Chroma add {chroma_build.ms / 1000:.0f} s): reindex from "
            f"Chroma {rebuild_watch.ms / 1000:.1f} s, index {on_disk:.0f} MB on disk, RSS +{rss_mb() - before:.0f} MB, "
            f"reconcile check (both sides' ids and hashes) {drift_watch.ms / 1000:.1f} s, in step: {drift.ok}"
        )
        contenders = {
            "ours dense": pipeline.retriever(stage1_mode="dense").retrieve,
            "ours hybrid": pipeline.retriever(stage1_mode="hybrid").retrieve,
            "BM25 alone": lambda query: pipeline.lexical.search(query, settings.recall_k),
        }
        print_latencies(latencies(contenders, queries), anchors=("ours dense",))
        feed_rows(pipeline, documents, drift_watch.ms)


def feed_rows(pipeline: TwoStagePipeline, documents: list, reconcile_ms: float) -> None:
    """The change feed at the lexical-scale size, against the full reconcile (``reconcile_ms``) as anchor: this host
    ingests one changed document (its end-of-ingest step timed), then another host's writer (Chroma only, no index of
    its own) replaces one document and deletes another, and this host's follower catches up."""
    collection = pipeline.store.open_collection()
    follower = pipeline.follower
    steps: list[float] = []
    follow = follower.follow

    def timed_follow(target: Collection) -> int:
        with Stopwatch() as watch:
            fixed = follow(target)
        steps.append(watch.ms)
        return fixed

    follower.follow = timed_follow  # type: ignore[method-assign]
    for round_ in range(3):
        changed = documents[0].model_copy(update={"text": f"{documents[0].text} revision{round_}"})
        pipeline.ingest([changed])
    follower.follow = follow  # type: ignore[method-assign]
    other_host = LexicalFollower(pipeline.store, pipeline.lexical)  # this host's index, a fresh process's follower
    catch_ups = []
    for round_ in range(3):
        replaced = documents[1].model_copy(update={"text": f"{documents[1].text} other{round_}"})
        ingest_into(pipeline.store, pipeline.embed_model, [replaced], show_progress=False)  # another host: Chroma only
        with Stopwatch() as watch:
            other_host.catch_up(collection)
        catch_ups.append(watch.ms)
    end_step, seen = statistics.median(steps), statistics.median(catch_ups)
    print(
        f"change feed at {collection.count():,} records (anchor: full reconcile {reconcile_ms / 1000:.2f} s): "
        f"end-of-ingest step after a one-document change {end_step / 1000:.3f} s ({end_step / reconcile_ms:.3f} x "
        f"reconcile); another host sees a one-document replacement in {seen / 1000:.3f} s of work "
        f"({seen / reconcile_ms:.3f} x reconcile); medians of 3, the first of each "
        f"{steps[0] / 1000:.3f} s / {catch_ups[0] / 1000:.3f} s (it also reads the minute of writes before the mark)"
    )


def contract_of(pipeline: TwoStagePipeline) -> CollectionContract:
    return embedding_contract(pipeline.embed_model)


def stock_ingestion(documents: list, settings: RetrieverSettings, embed_model: HuggingFaceEmbedding) -> None:
    """LlamaIndex's own ingestion into a fresh collection of the same embedded store."""
    with ChromaStore(settings.collection, settings.chroma) as store:
        collection = store.client.create_collection(settings.collection)
        VectorStoreIndex.from_documents(
            documents,
            storage_context=StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection)),
            embed_model=embed_model,
            transformations=[SentenceSplitter(chunk_size=WHOLE_DOCUMENT_CHUNK, chunk_overlap=0)],
        )


def stored_vectors(pipeline: TwoStagePipeline, ids: list[str]) -> np.ndarray:
    """The collection's vectors of ``ids`` (one chunk per document), in that order."""
    found = pipeline.store.open_collection().get(where={SOURCE_KEY: {"$in": ids}}, include=["metadatas", "embeddings"])
    by_source = {meta[SOURCE_KEY]: vector for meta, vector in zip(found["metadatas"], found["embeddings"], strict=True)}
    return np.asarray([by_source[doc_id] for doc_id in ids])


def embed_backend_rows(documents: list, settings: RetrieverSettings, queries: list[str], backends: list[str]) -> None:
    """Ingestion docs/s per runtime against LlamaIndex's own (2 rounds, taking turns), then search agreement."""
    factory = EmbedBackends(
        settings.embed_model, device=settings.device, batch_size=settings.embed_batch_size, trust_remote_code=False,
        cache_dir=settings.model_cache_dir,
    )  # fmt: skip
    chosen = factory.auto()
    print(f"embed_backend auto chose {chosen.embed_backend}: {chosen.backend_reason}")
    embeddings = {backend: factory.load(backend) for backend in backends}
    stock_embed = HuggingFaceEmbedding(model_name=settings.embed_model, embed_batch_size=settings.embed_batch_size)
    stock_embed.get_text_embedding("warm-up")
    spent = dict.fromkeys(["LlamaIndex fp32", *backends], 0.0)
    for round_ in range(2):
        for name in spent:
            target = settings.model_copy(update={"collection": f"embed-{name.replace(' ', '-')}-{round_}"})
            with Stopwatch() as watch:
                if name == "LlamaIndex fp32":
                    stock_ingestion(documents, target, stock_embed)
                else:
                    with TwoStagePipeline(target, embed_model=embeddings[name]) as pipeline:
                        pipeline.ingest(documents)
            spent[name] += watch.ms
    ids = [document.doc_id for document in documents]
    calibration = Calibration(queries, [document.text for document in documents], top_n=min(100, len(ids) // 3))

    def embedded(backend: str) -> Embedded:
        vectors = [embeddings[backend].get_query_embedding(query) for query in queries]
        with TwoStagePipeline(settings.model_copy(update={"collection": f"embed-{backend}-1"})) as pipeline:
            return Embedded(np.asarray(vectors), stored_vectors(pipeline, ids), 0.0)

    fp32 = embedded("torch")
    print(f"{len(documents)} documents, 2 rounds; search vs fp32 on {len(queries)} SciFact test queries")
    print(f"| runtime | docs/s | x LlamaIndex's docs/s | top-{calibration.top_n} overlap | same nearest |")
    print("|---|---|---|---|---|")
    for name, ms in spent.items():
        rate, speedup = 2 * len(documents) / ms * 1000, spent["LlamaIndex fp32"] / ms
        if name == "LlamaIndex fp32":
            print(f"| {name} (anchor) | {rate:.1f} | 1.00 | - | - |")
            continue
        ours = embedded(name)
        agreement = search_agreement(fp32, ours.queries, ours.corpus, calibration)
        label = f"ours {name}" + (" (auto's choice)" if name == chosen.embed_backend else "")
        print(f"| {label} | {rate:.1f} | {speedup:.2f} | {agreement.top_overlap:.3f} | {agreement.same_nearest}/"
              f"{agreement.queries} |")  # fmt: skip


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stage1-") as scratch:  # the stores it ingests: removed after
        run_sections(args, Path(scratch))


def run_sections(args: argparse.Namespace, persist_dir: Path) -> None:
    sections = set(args.sections.split(","))
    dataset = load_beir(args.data).limit(args.limit)
    documents = corpus_subset(dataset, args.corpus_size)
    queries = list(dataset.queries.values())
    settings = RetrieverSettings(
        embed_model=args.embed_model,
        persist_dir=persist_dir,
        collection="bench-stage1",
        recall_k=min(args.recall_k, len(documents)),
        chunk_size=WHOLE_DOCUMENT_CHUNK,
        chunk_overlap=0,
        show_progress=False,
        embed_backend="torch",  # sections 1-4 measure our overhead on fp32; section 5 compares runtimes
        model_cache_dir=args.model_cache_dir,
    )
    if "embed-backends" in sections:
        print(cpu_header())
        embed_backend_rows(documents, settings, queries, args.embed_backends.split(","))
        if sections == {"embed-backends"}:
            return
    encoder = SentenceTransformer(args.embed_model)
    print(f"{len(documents)} SciFact documents, {len(queries)} test queries, recall_k={settings.recall_k}")
    models = ModelPool()
    if sections & {"ingestion", "latency"}:
        ingestion(documents, settings, encoder, models)
    if "latency" in sections:
        query_latency(settings, encoder, models, queries)
    if "lexical" in sections:
        lexical_scale(args.lexical_scale, documents, settings, encoder, models, queries)
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
