"""Documents -> nodes -> embeddings -> Chroma upserts: idempotent, resumable, batched, with progress.

Node ids are derived from the source document id and the chunk's content, so a re-run adds nothing twice and an
interrupted run resumes where it stopped: ids already stored are neither embedded nor written again. Records use
LlamaIndex's Chroma layout (``_node_content`` metadata), so ``ChromaVectorStore`` reads them and vice versa.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode, Document, MetadataMode
from llama_index.core.vector_stores.utils import node_to_metadata_dict
from tqdm.auto import tqdm

from llama_index_twostage import store
from llama_index_twostage.models import load_embedding, sentence_transformer_of
from llama_index_twostage.nodes import model_text
from llama_index_twostage.retriever import embedding_model_name
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.timing import Stopwatch

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from llama_index.core.base.embeddings.base import BaseEmbedding

logger = logging.getLogger(__name__)

_NODE_ID_NAMESPACE = uuid.UUID("5f1b3c9e-2d4a-4c1e-9a7b-7e6f0d2c8a41")
T = TypeVar("T")


@dataclass(frozen=True)
class IngestReport:
    """What an ingestion run did; ``added + already_stored`` is every distinct chunk of the documents."""

    collection: str
    documents: int
    chunks: int
    added: int
    already_stored: int
    skipped_empty: int
    stored_total: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunk_id(source_id: str, node: BaseNode) -> str:
    """Deterministic id of a chunk: the same source and content always map to the same id."""
    content = json.dumps([source_id, node.get_content(MetadataMode.NONE), node.metadata], sort_keys=True, default=str)
    return str(uuid.uuid5(_NODE_ID_NAMESPACE, content))


def split_documents(documents: Sequence[Document], settings: RetrieverSettings) -> list[BaseNode]:
    """Chunk with LlamaIndex's SentenceSplitter and give each distinct chunk its deterministic id."""
    splitter = SentenceSplitter(
        chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap, include_prev_next_rel=False
    )
    chunks: dict[str, BaseNode] = {}
    for document in documents:
        for node in splitter.get_nodes_from_documents([document]):
            node.id_ = chunk_id(document.id_, node)
            chunks.setdefault(node.id_, node)
    return list(chunks.values())


def embedding_dimension(embed_model: BaseEmbedding) -> int:
    model = sentence_transformer_of(embed_model)
    if model is not None:
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(dimension())
    return len(embed_model.get_text_embedding("dimension probe"))


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _stored_ids(collection: Collection, ids: list[str], batch_size: int) -> set[str]:
    stored: set[str] = set()
    for batch in _batches(ids, batch_size):
        stored.update(collection.get(ids=list(batch), include=[])["ids"])
    return stored


def _upsert(collection: Collection, nodes: Sequence[BaseNode], embeddings: list[list[float]]) -> None:
    collection.upsert(
        ids=[node.node_id for node in nodes],
        embeddings=embeddings,
        documents=[node.get_content(MetadataMode.NONE) for node in nodes],
        metadatas=[node_to_metadata_dict(node, remove_text=True, flat_metadata=True) for node in nodes],
    )


def _embed_and_write(
    collection: Collection,
    nodes: list[BaseNode],
    embed_model: BaseEmbedding,
    settings: RetrieverSettings,
    write_batch_size: int,
) -> None:
    """Embed batch after batch while a writer thread upserts the previous one, so Chroma I/O hides behind encoding."""
    with ThreadPoolExecutor(max_workers=1) as writer, tqdm(
        total=len(nodes), desc="embedding", unit="chunk", disable=not settings.show_progress
    ) as progress:
        pending: Future[None] | None = None
        for batch in _batches(nodes, write_batch_size):
            embeddings: list[list[float]] = []
            for texts in _batches([model_text(node) or "" for node in batch], settings.embed_batch_size):
                embeddings.extend(embed_model.get_text_embedding_batch(list(texts)))
                progress.update(len(texts))
            if pending is not None:
                pending.result()
            pending = writer.submit(_upsert, collection, batch, embeddings)
        if pending is not None:
            pending.result()


def ingest_documents(
    documents: Sequence[Document],
    settings: RetrieverSettings,
    *,
    embed_model: BaseEmbedding | None = None,
) -> IngestReport:
    """Chunk, embed and store ``documents`` in the settings' collection; safe to re-run and to resume.

    Args:
        documents: LlamaIndex documents; their ``id_`` is the source id (``SimpleDirectoryReader(...,
            filename_as_id=True)`` keeps it stable across runs). They are not modified.
        settings: the collection, embedding model, chunking and batch sizes.
        embed_model: any LlamaIndex embedding, instead of the settings' ``embed_model``.
    """
    with Stopwatch() as watch:
        embed_model = embed_model or load_embedding(
            settings.embed_model,
            device=settings.device,
            batch_size=settings.embed_batch_size,
            trust_remote_code=settings.trust_remote_code,
        )
        contract = store.CollectionContract(
            embedding_model_name(embed_model), embedding_dimension(embed_model), settings.distance_space
        )
        chunks = split_documents(documents, settings)
        with_text = [node for node in chunks if model_text(node) is not None]
        if len(with_text) < len(chunks):
            logger.warning("skipped %d chunks without text", len(chunks) - len(with_text))
        with store.server_errors(settings):
            collection = store.create_or_open_collection(settings, contract)
            write_batch_size = min(settings.upsert_batch_size, store.get_client(settings).get_max_batch_size())
            stored = _stored_ids(collection, [node.node_id for node in with_text], write_batch_size)
            new = [node for node in with_text if node.node_id not in stored]
            _embed_and_write(collection, new, embed_model, settings, write_batch_size)
            stored_total = collection.count()
    return IngestReport(
        collection=settings.collection,
        documents=len(documents),
        chunks=len(chunks),
        added=len(new),
        already_stored=len(stored),
        skipped_empty=len(chunks) - len(with_text),
        stored_total=stored_total,
        seconds=watch.ms / 1000.0,
    )
