"""Documents -> nodes -> embeddings -> Chroma upserts: idempotent, crash-safe, batched, with progress.

Chunk ids derive from the source document id and the chunk's content, and every chunk records its source's
content hash (``twostage_doc_hash``), how many chunks that version has (``twostage_doc_chunks``) and when it was
written (``twostage_ingested_at``). A re-run therefore

- skips an unchanged document without splitting, embedding or rewriting it (same hash, all its chunks stored);
- embeds only the chunks a changed document did not have, relabels the ones it kept, and deletes the ones it no
  longer produces, so no stale chunk is left behind;
- completes an interrupted run: new chunks are written before stale ones are deleted, so a crash at any point
  leaves every document retrievable, and the next run converges to exactly what a clean run stores;
- reuses the stored embedding of any chunk whose embedded text is already in the collection (``twostage_text_hash``):
  a moved or renamed file is not embedded again.

Every write is stamped with its time and every deletion leaves a tombstone first: the change feed that the lexical
index on every host follows (:mod:`llama_index_twostage.store.feed`). A run may name its ``source`` (a folder, or a
name the user gave it); a document id that another source wrote is an error, never a silent replacement.

Records use LlamaIndex's Chroma layout (``_node_content`` and ``ref_doc_id`` metadata), so ``ChromaVectorStore``
reads them and vice versa.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index.core.schema import BaseNode, Document, MetadataMode
from llama_index.core.vector_stores.utils import node_to_metadata_dict
from tqdm.auto import tqdm

from llama_index_twostage.errors import ConfigurationError, DocumentError, LexicalIndexBusy
from llama_index_twostage.ingest.documents import Source, collect_sources
from llama_index_twostage.ingest.transform import Chunking, NodeSplitter, Splitting, rekeyed
from llama_index_twostage.models import embedding_contract
from llama_index_twostage.nodes import model_text
from llama_index_twostage.store.chroma import ChromaStore
from llama_index_twostage.store.contract import (
    CHUNKS_KEY,
    HASH_KEY,
    ORIGIN_KEY,
    SOURCE_KEY,
    STAMP_KEY,
    TEXT_HASH_KEY,
)
from llama_index_twostage.store.feed import LexicalFollower, leave_tombstones, stamp_now
from llama_index_twostage.store.lexical import LexicalIndex, LexicalRecord
from llama_index_twostage.timing import Stopwatch

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import GetResult
    from llama_index.core.base.embeddings.base import BaseEmbedding

logger = logging.getLogger(__name__)

_SOURCES_PER_LOOKUP = 256
_NODE_ID_NAMESPACE = uuid.UUID("5f1b3c9e-2d4a-4c1e-9a7b-7e6f0d2c8a41")
T = TypeVar("T")


@dataclass(frozen=True)
class IngestReport:
    """What an ingestion run did.

    ``chunks == added + already_stored + skipped_empty``. Chunks of unchanged documents are counted from the
    store (they are not split again) and included in ``already_stored``.
    """

    collection: str
    documents: int
    chunks: int
    added: int
    already_stored: int
    skipped_empty: int
    empty_documents: int  # documents without text: not stored (a chunk of metadata alone would rank as noise)
    unchanged_documents: int  # skipped by content hash: neither split, embedded nor rewritten
    replaced_documents: int  # held chunks of another version (changed or interrupted) and were brought up to date
    removed_stale: int  # chunks deleted because their source no longer produces them
    stored_total: int
    lexical_repaired: int  # lexical records the end-of-run catch-up had to fix (e.g. after a crash); usually 0
    seconds: float
    reused_embeddings: int = 0  # chunks whose embedded text was stored already (a moved file): not embedded again
    deleted_documents: int = 0  # with sync: documents of this source no longer given, deleted with their chunks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeleteReport:
    """What a deletion did: documents that had chunks, and the chunks deleted from every index."""

    documents: int
    chunks: int
    stored_total: int


@dataclass
class StoredSource:
    """What the collection holds for one document: chunk id -> the (doc hash, chunk count, origin) it recorded."""

    chunks: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)

    def is_current(self, doc_hash: str, origin: str | None) -> bool:
        """Every chunk of exactly this version is stored (a crash mid-write leaves fewer than recorded)."""
        return bool(self.chunks) and set(self.chunks.values()) == {(doc_hash, len(self.chunks), origin)}

    def origins(self) -> set[str]:
        return {str(origin) for _, _, origin in self.chunks.values() if origin}


@dataclass
class Plan:
    """What a run has to write and delete, decided before anything is written."""

    versions: dict[str, tuple[str, int]] = field(default_factory=dict)  # source id -> (doc hash, chunk count)
    to_embed: list[BaseNode] = field(default_factory=list)
    to_relabel: list[BaseNode] = field(default_factory=list)  # stored, but recorded under an older version
    stale_ids: list[str] = field(default_factory=list)
    chunks: int = 0
    already_stored: int = 0
    skipped_empty: int = 0
    unchanged_documents: int = 0
    replaced_documents: int = 0


def chunk_id(source_id: str, node: BaseNode) -> str:
    """Deterministic id of a chunk from what decides the stored record's content: source, chunk text and the text
    that is embedded (metadata included, per the document's exclusions and templates).

    A chunk whose embedding would change gets a new id and is embedded again; metadata that is not embedded (a
    file's size or date) is not part of the id, so a changed value is updated in place, without re-embedding.
    """
    content = json.dumps([source_id, node.get_content(MetadataMode.NONE), model_text(node)])
    return str(uuid.uuid5(_NODE_ID_NAMESPACE, content))


def split_document(document: Document, splitter: NodeSplitter) -> list[BaseNode]:
    """Chunk one document (LlamaIndex's SentenceSplitter, or any transformation chain); each distinct chunk gets its
    deterministic id, and the links between chunks follow (:func:`~llama_index_twostage.ingest.transform.rekeyed`)."""
    try:
        nodes = splitter.get_nodes_from_documents([document])
    except ValueError as error:  # e.g. metadata longer than chunk_size
        raise DocumentError(f"document {document.id_!r} cannot be split: {error}") from error
    chunks: dict[str, BaseNode] = {}
    for node in rekeyed(nodes, lambda node: chunk_id(document.id_, node)):
        chunks.setdefault(node.id_, node)
    return list(chunks.values())


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def stored_sources(collection: Collection, source_ids: list[str], store: ChromaStore) -> dict[str, StoredSource]:
    """The chunks the collection holds for each of these sources, with the version each recorded."""
    held: dict[str, StoredSource] = {}
    for batch in _batches(source_ids, _SOURCES_PER_LOOKUP):
        lookup = partial(collection.get, where={SOURCE_KEY: {"$in": list(batch)}}, include=["metadatas"])
        result = store.with_retries(lookup)
        for node_id, metadata in zip(result["ids"], result["metadatas"] or []):
            recorded = (metadata.get(HASH_KEY), metadata.get(CHUNKS_KEY), metadata.get(ORIGIN_KEY))
            held.setdefault(str(metadata[SOURCE_KEY]), StoredSource()).chunks[node_id] = recorded
    return held


def named_source(origin: str) -> bool:
    """A source the user named (no path separator) rather than a folder's location."""
    return "/" not in origin and "\\" not in origin


def adopted_origins(held: dict[str, StoredSource], origin: str | None) -> set[str]:
    """The other sources whose documents this run takes over; a document another source wrote is an error.

    Documents that record no source (written before sources were recorded, or through the API) are taken over; a
    source the user named takes over a folder's documents (the same folder, moved: its ids kept).
    """
    adopted: set[str] = set()
    for document_id, stored in held.items():
        for other in stored.origins() - {origin or ""}:
            if origin is not None and named_source(origin) and not named_source(other):
                adopted.add(other)
                continue
            this = f"source {origin!r}" if origin else "documents given without a source"
            hint = (
                "if it is the same folder moved, name it: --source NAME keeps its ids; a different folder needs a "
                "--source name of its own"
                if origin and not named_source(origin)
                else "give the documents other ids, or another source name"
            )
            raise DocumentError(
                f"document {document_id!r} is stored from source {other!r}; this run ingests {this}, which would "
                f"replace it: {hint}"
            )
    return adopted


def _plan_changed(plan: Plan, source: Source, held: StoredSource, splitter: NodeSplitter, origin: str | None) -> None:
    """Split a new or changed document: embed the chunks not stored, relabel the kept ones, drop the rest."""
    chunks = split_document(source.document, splitter)
    with_text = [node for node in chunks if model_text(node) is not None]
    plan.versions[source.document.id_] = (source.doc_hash, len(with_text))
    version = (source.doc_hash, len(with_text), origin)
    plan.chunks += len(chunks)
    plan.skipped_empty += len(chunks) - len(with_text)
    for node in with_text:
        recorded = held.chunks.get(node.node_id)
        if recorded is None:
            plan.to_embed.append(node)
            continue
        plan.already_stored += 1
        if recorded != version:
            plan.to_relabel.append(node)
    kept = {node.node_id for node in with_text}
    plan.stale_ids.extend(node_id for node_id in held.chunks if node_id not in kept)
    plan.replaced_documents += bool(held.chunks)


def plan_ingestion(
    sources: dict[str, Source],
    held: dict[str, StoredSource],
    chunking: Chunking | Splitting,
    origin: str | None = None,
) -> Plan:
    """Decide, per document, whether it is unchanged (skipped) or must be (re)written. A document held but not among
    ``sources`` was given without text: it holds nothing now, so its earlier chunks go."""
    splitter = chunking.splitter()
    plan = Plan()
    for source_id, source in sources.items():
        stored = held.get(source_id, StoredSource())
        if stored.is_current(source.doc_hash, origin):
            plan.unchanged_documents += 1
            plan.chunks += len(stored.chunks)
            plan.already_stored += len(stored.chunks)
        else:
            _plan_changed(plan, source, stored, splitter, origin)
    for source_id in held.keys() - sources.keys():
        plan.stale_ids.extend(held[source_id].chunks)
        plan.replaced_documents += 1
    return plan


def text_hash(text: str) -> str:
    """What identifies an embedding within a collection: the text the bi-encoder read."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class Writer:
    """Idempotent batched writes of one run; each batch is retried on a flapping server (see ``chroma_retries``).

    Each write is stamped with its own time (the change feed's clock) and mirrored into this host's lexical index
    right after it; a mirror that finds the index busy (another process writing it) is left to the feed, as is
    what a crash between the two writes leaves behind. A deletion leaves its tombstones before it deletes.
    """

    collection: Collection
    store: ChromaStore
    versions: dict[str, tuple[str, int]]
    batch_size: int
    follower: LexicalFollower | None = None
    origin: str | None = None

    def _mirror(self, ids: Sequence[str], stamp: float, records: Sequence[LexicalRecord] = ()) -> None:
        """Apply a write to the lexical index: ``records`` added, or (none given) ``ids`` deleted."""
        if self.follower is None:
            return
        lexical = self.follower.lexical
        try:
            lexical.add(records) if records else lexical.delete(ids)
        except LexicalIndexBusy:
            return  # another process is writing the index: the feed brings this write
        self.follower.mirrored(ids, stamp)

    def _lexical_records(self, nodes: Sequence[BaseNode]) -> list[LexicalRecord]:
        return [
            LexicalRecord(node.node_id, model_text(node) or "", self.versions[str(node.ref_doc_id)][0])
            for node in nodes
        ]

    def _metadatas(self, nodes: Sequence[BaseNode], stamp: float) -> list[dict[str, Any]]:
        records = []
        for node in nodes:
            doc_hash, chunks = self.versions[str(node.ref_doc_id)]
            metadata = node_to_metadata_dict(node, remove_text=True, flat_metadata=True)
            recorded = {HASH_KEY: doc_hash, CHUNKS_KEY: chunks, STAMP_KEY: stamp}
            recorded[TEXT_HASH_KEY] = text_hash(model_text(node) or "")
            if self.origin is not None:
                recorded[ORIGIN_KEY] = self.origin
            records.append({**metadata, **recorded})
        return records

    def upsert(self, nodes: Sequence[BaseNode], embeddings: list[list[float]]) -> None:
        stamp = stamp_now()
        ids = [node.node_id for node in nodes]
        write = partial(
            self.collection.upsert,
            ids=ids,
            embeddings=embeddings,
            documents=[node.get_content(MetadataMode.NONE) for node in nodes],
            metadatas=self._metadatas(nodes, stamp),
        )
        self.store.with_retries(write)
        self._mirror(ids, stamp, self._lexical_records(nodes))

    def relabel(self, nodes: Sequence[BaseNode]) -> None:
        """Record the new version on chunks a changed document kept (metadata only: no re-embedding)."""
        for batch in _batches(nodes, self.batch_size):
            stamp = stamp_now()
            ids = [node.node_id for node in batch]
            update = partial(self.collection.update, ids=ids, metadatas=self._metadatas(batch, stamp))
            self.store.with_retries(update)
            self._mirror(ids, stamp, self._lexical_records(batch))

    def delete(self, ids: Sequence[str]) -> None:
        for batch in _batches(ids, self.batch_size):
            stamp = stamp_now()
            leave_tombstones(self.store, batch, stamp)
            self.store.with_retries(partial(self.collection.delete, ids=list(batch)))
            self._mirror(batch, stamp)

    def stored_embeddings(self, texts: Sequence[str]) -> dict[str, list[float]]:
        """Embeddings the collection already holds for any of these texts, by text hash (vectors are read only when
        some text is stored: the usual batch costs one metadata lookup)."""
        from chromadb.errors import InternalError

        hashes = list(dict.fromkeys(map(text_hash, texts)))
        lookup = partial(self.collection.get, where={TEXT_HASH_KEY: {"$in": hashes}}, include=[])
        found = self.store.with_retries(lookup)["ids"]
        if not found:
            return {}

        def read() -> GetResult | None:
            try:
                return self.collection.get(ids=found, include=["metadatas", "embeddings"])
            except InternalError as error:  # e.g. a restarted server whose vector index is not on disk yet
                logger.info("stored embeddings not reusable now (%s): embedding these chunks", error)
                return None

        stored = self.store.with_retries(read)
        if stored is None:
            return {}
        vectors = stored["embeddings"] if stored["embeddings"] is not None else []
        return {
            str(metadata[TEXT_HASH_KEY]): [float(value) for value in vector]
            for metadata, vector in zip(stored["metadatas"] or [], vectors)
        }


def by_length(nodes: Sequence[BaseNode]) -> list[tuple[BaseNode, str]]:
    """Nodes with the text the bi-encoder reads, longest first.

    LlamaIndex hands the model ``embed_batch_size`` texts at a time, and a batch costs what its longest text costs;
    ordered by length, each batch holds texts of about one length and pads little (what
    ``SentenceTransformer.encode`` does when it is given all texts at once). Order within an upsert is free.
    """
    with_text = [(node, model_text(node) or "") for node in nodes]
    return sorted(with_text, key=lambda pair: -len(pair[1]))


def _embeddings(writer: Writer, texts: list[str], embed_model: BaseEmbedding, progress: tqdm) -> tuple[list, int]:
    """One vector per text: stored ones reused, the others embedded; returns them and how many were reused."""
    stored = writer.stored_embeddings(texts)
    to_embed = list(dict.fromkeys(text for text in texts if text_hash(text) not in stored))
    embedded: dict[str, list[float]] = {}
    for chunk in _batches(to_embed, embed_model.embed_batch_size):
        embedded.update(zip(chunk, embed_model.get_text_embedding_batch(list(chunk))))
        progress.update(len(chunk))
    progress.update(len(texts) - len(to_embed))
    vectors = [embedded[text] if text in embedded else stored[text_hash(text)] for text in texts]
    return vectors, sum(text_hash(text) in stored for text in texts)


def _embed_and_write(writer: Writer, nodes: list[BaseNode], embed_model: BaseEmbedding, show_progress: bool) -> int:
    """Embed batch after batch while a writer thread upserts the previous one, so Chroma I/O hides behind encoding.
    Returns how many stored embeddings were reused."""
    reused = 0
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(total=len(nodes), desc="embedding", unit="chunk", disable=not show_progress) as progress,
    ):
        pending: Future[None] | None = None
        for unordered in _batches(nodes, writer.batch_size):
            batch = by_length(unordered)
            embeddings, found = _embeddings(writer, [text for _, text in batch], embed_model, progress)
            reused += found
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.upsert, [node for node, _ in batch], embeddings)
        if pending is not None:
            pending.result()
    return reused


def _open_for_writing(store: ChromaStore, embed_model: BaseEmbedding, batch_size: int) -> tuple[Collection, int]:
    """The collection (created with the model's contract, or checked against it) and the upsert batch size."""
    contract = embedding_contract(embed_model, store.config.distance_space)
    collection = store.with_retries(partial(store.create_or_open_collection, contract))
    return collection, min(batch_size, store.max_batch_size())


def ingest_into(
    store: ChromaStore,
    embed_model: BaseEmbedding,
    documents: Sequence[Document],
    *,
    chunking: Chunking | Splitting | None = None,
    upsert_batch_size: int = 1000,
    show_progress: bool = True,
    lexical: LexicalIndex | None = None,
    follower: LexicalFollower | None = None,
    source: str | None = None,
    sync: bool = False,
) -> IngestReport:
    """Chunk, embed and store ``documents`` in the store's collection; safe to re-run and to resume.

    Args:
        store: where the chunks go; the collection is created on first use with ``embed_model``'s contract.
        embed_model: any LlamaIndex embedding (texts are sent ``embed_model.embed_batch_size`` at a time).
        documents: LlamaIndex documents; their ``id_`` is the source id (``SimpleDirectoryReader(...,
            filename_as_id=True)`` keeps it stable across runs). A document re-ingested with other content
            replaces its earlier chunks. They are not modified.
        chunking: chunk size and overlap, or any LlamaIndex transformation chain
            (:class:`~llama_index_twostage.ingest.transform.Transformations`); part of each document's hash:
            changing it re-splits every document.
        upsert_batch_size: records per Chroma write (capped by the client).
        lexical, follower: the lexical index to keep in step with Chroma (or the follower that keeps it): every
            write is mirrored, and at the end the index catches up with the change feed (reconciled in full only
            where the feed cannot answer), so a run also repairs what an earlier crash left behind.
        source: where the documents come from (a folder's location or a name the user gave it), recorded on every
            chunk: a document id that another source wrote is refused.
        sync: delete the documents stored from ``source`` that are not among ``documents`` (a file removed).

    Raises:
        DocumentError: a document Chroma cannot store as given, or whose id another source wrote (checked for all
            before anything is written).
        ChromaUnavailableError: the store is unreachable; re-running completes the ingestion.
    """
    if upsert_batch_size <= 0:
        raise ConfigurationError(f"upsert_batch_size must be positive, got {upsert_batch_size}")
    if sync and source is None:
        raise ConfigurationError("sync needs the documents' source: the documents it holds are the ones kept")
    chunking = chunking or Chunking()
    if follower is None and lexical is not None:
        follower = LexicalFollower(store, lexical, page_size=upsert_batch_size)
    with Stopwatch() as watch:
        # Every document is checked (refused whole, before anything is written); those without text are not stored.
        validated = collect_sources(documents, chunking.identity)
        sources = {source_id: source for source_id, source in validated.items() if source.document.text.strip()}
        empty_documents = sum(not document.text.strip() for document in documents)
        if empty_documents:
            logger.warning("skipped %d documents without text", empty_documents)
        collection, batch_size = _open_for_writing(store, embed_model, upsert_batch_size)
        held = stored_sources(collection, list(validated), store)  # those without text too: emptied since
        adopted = adopted_origins(held, source)
        plan = plan_ingestion(sources, held, chunking, source)
        if plan.skipped_empty:
            logger.warning("skipped %d chunks without text", plan.skipped_empty)
        writer = Writer(collection, store, plan.versions, batch_size, follower, source)
        reused = _embed_and_write(writer, plan.to_embed, embed_model, show_progress)
        writer.relabel(plan.to_relabel)
        writer.delete(plan.stale_ids)
        gone = _documents_gone(writer, {source, *adopted} if sync else set(), set(validated))
        stored_total = store.with_retries(collection.count)
        # 0 when the mirrored writes all landed; else what an earlier crash (or another process) left behind
        lexical_repaired = 0 if follower is None else follower.follow(collection)
    return IngestReport(
        collection=store.collection_name,
        documents=len(documents),
        chunks=plan.chunks,
        added=len(plan.to_embed),
        already_stored=plan.already_stored,
        skipped_empty=plan.skipped_empty,
        empty_documents=empty_documents,
        unchanged_documents=plan.unchanged_documents,
        replaced_documents=plan.replaced_documents,
        removed_stale=len(plan.stale_ids),
        stored_total=stored_total,
        lexical_repaired=lexical_repaired,
        seconds=watch.ms / 1000.0,
        reused_embeddings=reused,
        deleted_documents=gone,
    )


def _documents_gone(writer: Writer, origins: set[str | None], kept: set[str]) -> int:
    """Delete the documents stored from these sources that are not in ``kept``; returns how many."""
    origins.discard(None)
    if not origins:
        return 0
    lookup = partial(writer.collection.get, where={ORIGIN_KEY: {"$in": sorted(origins)}}, include=["metadatas"])
    found = writer.store.with_retries(lookup)
    gone = {str(metadata[SOURCE_KEY]) for metadata in found["metadatas"] or []} - kept
    writer.delete(
        [
            node_id
            for node_id, metadata in zip(found["ids"], found["metadatas"] or [])
            if str(metadata[SOURCE_KEY]) in gone
        ]
    )
    return len(gone)


def delete_documents(
    store: ChromaStore,
    ref_doc_ids: Sequence[str],
    *,
    follower: LexicalFollower | None = None,
    batch_size: int = 1000,
) -> DeleteReport:
    """Delete every chunk of these documents from Chroma and the lexical index, leaving tombstones for every other
    host's index (LlamaIndex's ``delete_ref_doc``, for several documents). Unknown ids are ignored.

    Raises:
        CollectionNotFoundError: the collection does not exist.
    """
    collection = store.with_retries(store.open_collection)
    held = stored_sources(collection, list(dict.fromkeys(ref_doc_ids)), store)
    writer = Writer(collection, store, {}, min(batch_size, store.max_batch_size()), follower)
    chunks = [node_id for stored in held.values() for node_id in stored.chunks]
    writer.delete(chunks)
    if follower is not None:
        follower.follow(collection)
    return DeleteReport(len(held), len(chunks), store.with_retries(collection.count))
