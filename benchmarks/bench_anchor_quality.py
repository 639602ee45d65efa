"""Anchor benchmark: LlamaIndex's stock two-stage pipeline vs ours, same models, same documents, same process.

Stock: ``VectorStoreIndex`` over ``ChromaVectorStore`` with ``HuggingFaceEmbedding``, reranked by
``SentenceTransformerRerank``. Ours: ``ChromaRecallRetriever`` + ``CrossEncoderRerank`` in each configuration of
``OURS`` (the default ``auto``, fp32, bf16, and bf16 with a cascade), with the score cache off so every pair is
really scored. Both ingest the same documents as one node each into their own collections, retrieve ``recall_k``
candidates and keep the best ``top_k`` (10, so nDCG@10 reads a full list). Queries alternate between the pipelines
so background load hits all alike; each pipeline answers one warm-up query first, so model loading is not timed.

The corpus defaults to the queries' relevant documents plus the first documents of the corpus (``--corpus-size``;
0 for all), so the default run finishes in a few minutes; ``--persist-dir`` keeps the embeddings between runs.

    python benchmarks/bench_anchor_quality.py --limit 20 --recall-k 100
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from chromadb.api.models.Collection import Collection
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.schema import NodeWithScore
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.vector_stores.chroma import ChromaVectorStore

from llama_index_twostage import ChromaStore, ModelPool, RetrieverSettings, TwoStagePipeline
from llama_index_twostage.evaluation import Qrels, RetrievalDataset, evaluate_run, load_beir
from llama_index_twostage.evaluation.runner import WHOLE_DOCUMENT_CHUNK
from llama_index_twostage.timing import Stopwatch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STOCK_MAX_LENGTH = 512  # SentenceTransformerRerank's fixed window; ours is given the same
Pipeline = Callable[[str], list[NodeWithScore]]
BF16_CASCADE = {"rerank_backend": "torch-bf16", "cascade_k": 30, "cascade_max_length": 128}
OURS: dict[str, dict[str, object]] = {
    "ours, default (rerank_backend auto)": {},
    "ours, torch fp32": {"rerank_backend": "torch"},
    "ours, torch-bf16": {"rerank_backend": "torch-bf16"},
    "ours, bf16 + cascade 30 @128 (a quality trade-off)": BF16_CASCADE,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "scifact", help="BEIR folder")
    parser.add_argument("--embed-model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--rerank-model", default=str(SHARED / "models" / "twostage-test-reranker"))
    parser.add_argument("--limit", type=int, default=20, help="first N judged test queries")
    parser.add_argument("--recall-k", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--corpus-size", type=int, default=1000, help="documents to ingest (0: the whole corpus)")
    parser.add_argument("--persist-dir", type=Path, default=None, help="Chroma folder (default: a fresh temp dir)")
    return parser.parse_args()


def corpus_subset(dataset: RetrievalDataset, size: int) -> list[Document]:
    """The queries' relevant documents first, then corpus order up to ``size`` (all when size is 0)."""
    relevant = [doc_id for judged in dataset.qrels.values() for doc_id in judged]
    ordered = list(dict.fromkeys([*relevant, *dataset.corpus]))
    return [dataset.corpus[doc_id] for doc_id in (ordered[:size] if size else ordered)]


def ours(documents: list[Document], settings: RetrieverSettings) -> dict[str, Pipeline]:
    """One pipeline per configuration in ``OURS``, all over the one collection ingested here, sharing models."""
    models = ModelPool()
    TwoStagePipeline(settings, models=models).ingest(documents)
    return {
        name: TwoStagePipeline(settings.model_copy(update={**overrides, "score_cache_size": 0}), models=models)
        .two_stage_retriever()
        .retrieve
        for name, overrides in OURS.items()
    }


def stock(documents: list[Document], settings: RetrieverSettings, collection: Collection | None = None) -> Pipeline:
    """LlamaIndex as its documentation wires it, on the same embedded Chroma store: its own collection, or
    ``collection`` (one our ingestion wrote, which ``ChromaVectorStore`` reads as its own: the same vectors)."""
    if collection is None:
        collection = ChromaStore(settings.collection, settings.chroma).client.get_or_create_collection(
            f"{settings.collection}-stock"
        )
    vector_store = ChromaVectorStore(chroma_collection=collection)
    embed_model = HuggingFaceEmbedding(model_name=settings.embed_model)
    if collection.count():
        index = VectorStoreIndex.from_vector_store(vector_store, embed_model=embed_model)
    else:
        index = VectorStoreIndex.from_documents(
            documents,
            storage_context=StorageContext.from_defaults(vector_store=vector_store),
            embed_model=embed_model,
            transformations=[SentenceSplitter(chunk_size=WHOLE_DOCUMENT_CHUNK, chunk_overlap=0)],
            show_progress=settings.show_progress,
        )
    retriever = index.as_retriever(similarity_top_k=settings.recall_k)
    rerank = SentenceTransformerRerank(top_n=settings.top_k, model=settings.rerank_model)
    return lambda query: rerank.postprocess_nodes(retriever.retrieve(query), query_str=query)


def run(
    pipelines: dict[str, Pipeline], queries: dict[str, str]
) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[float]]]:
    """Every query through every pipeline, alternating; returns the rankings and the ms per query."""
    for pipeline in pipelines.values():
        # Warm-up outside the timings (models, collections), on a query that is not measured: our score cache
        # would otherwise answer the first measured query for free.
        pipeline("warm-up: which trials measured blood pressure?")
    rankings: dict[str, dict[str, list[str]]] = {name: {} for name in pipelines}
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for query_id, query in queries.items():
        for name, pipeline in pipelines.items():
            with Stopwatch() as watch:
                results = pipeline(query)
            times[name].append(watch.ms)
            rankings[name][query_id] = [scored.node.ref_doc_id or scored.node.node_id for scored in results]
    return rankings, times


@contextlib.contextmanager
def chroma_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """The folder to ingest into: the one given (kept, to reuse its embeddings), else a temporary one removed after."""
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        yield Path(scratch)


def main() -> None:
    args = parse_args()
    with chroma_folder(args.persist_dir, "anchor-") as persist_dir:
        compare(args, persist_dir)


def compare(args: argparse.Namespace, persist_dir: Path) -> None:
    logging.getLogger("llama_index_twostage.rerank").setLevel(logging.ERROR)  # the 512 window truncates a few pairs
    dataset = load_beir(args.data).limit(args.limit)
    documents = corpus_subset(dataset, args.corpus_size)
    settings = RetrieverSettings(
        embed_model=args.embed_model,
        rerank_model=args.rerank_model,
        persist_dir=persist_dir,
        chroma_mode="embedded",
        collection="anchor",
        recall_k=args.recall_k,
        top_k=args.top_k,
        max_length=STOCK_MAX_LENGTH,
        chunk_size=WHOLE_DOCUMENT_CHUNK,
        chunk_overlap=0,
    )
    print(f"{len(dataset.queries)} queries, {len(documents)} documents, recall_k={args.recall_k}, top_k={args.top_k}")
    pipelines = {"stock LlamaIndex": stock(documents, settings), **ours(documents, settings)}
    print_table(*run(pipelines, dataset.queries), dataset.qrels)


def print_table(rankings: dict[str, dict[str, list[str]]], times: dict[str, list[float]], qrels: Qrels) -> None:
    """nDCG@10 and latency of each pipeline against the first (the anchor, stock LlamaIndex), as a Markdown table."""
    anchor = next(iter(rankings))
    p50 = {name: statistics.median(values) for name, values in times.items()}
    anchor_ndcg = evaluate_run(rankings[anchor], qrels)["ndcg@10"]
    print("| pipeline | nDCG@10 | vs stock | p50 ms/query | p95 ms | p50 / stock |\n|---|---|---|---|---|---|")
    for name in rankings:
        ndcg = evaluate_run(rankings[name], qrels)["ndcg@10"]
        print(
            f"| {name} | {ndcg:.4f} | {ndcg - anchor_ndcg:+.4f} | {p50[name]:,.0f} | "
            f"{float(np.percentile(times[name], 95)):,.0f} | {p50[name] / p50[anchor]:.2f} |"
        )


if __name__ == "__main__":
    main()
