"""``verify_store``: does a collection still hold what ingestion promises?

Ingestion keeps each source's chunks at one version and writes new chunks before deleting stale ones, so an
interrupted run can leave, until it is re-run, chunks of an older version (orphans) or a version with chunks
missing. Other writers can leave chunks without a source or vectors of another dimension. This reads every
record once and names each of these, so an operator can tell a healthy collection from one to re-ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llama_index_twostage.store.chroma import ChromaStore
from llama_index_twostage.store.contract import (
    CHUNKS_KEY,
    HASH_KEY,
    SOURCE_KEY,
    STAMP_KEY,
    CollectionContract,
    model_identity,
)
from llama_index_twostage.store.lexical import LexicalIndex
from llama_index_twostage.store.reconcile import LexicalDrift, drift_from, named_ids, record_version

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection


@dataclass
class _Version:
    """One source's chunks as recorded: (stamp, doc hash, chunk count) per chunk id."""

    chunks: dict[str, tuple[float, str, Any]] = field(default_factory=dict)

    def newest(self) -> tuple[float, str, Any]:
        return max(self.chunks.values(), key=lambda recorded: recorded[0])


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_collection_integrity` found; ``ok`` when ``problems`` is empty."""

    collection: str
    nodes: int
    sources: int
    embed_model: str | None  # as recorded by the collection
    dimension: int | None  # as recorded (or, for collections of other tools, of the first vector)
    contract_problem: str | None  # no recorded model, or another model than the settings'
    bad_embeddings: list[str]  # ids whose vector is missing or of another dimension
    orphans: list[str]  # chunks of an older version of their source than its newest
    incomplete_sources: list[str]  # sources whose newest version has fewer chunks than it recorded
    sourceless: list[str]  # chunks that name no source document
    unversioned: int  # chunks without a recorded doc hash (written by other tools): not checked for staleness
    lexical: LexicalDrift | None = None  # how the lexical index differs from these records (None: not checked)

    @property
    def problems(self) -> list[str]:
        """One line per kind of problem, with a few of the ids concerned."""
        found = [self.contract_problem] if self.contract_problem else []
        found += named_ids(
            (self.bad_embeddings, f"chunks without a {self.dimension}-dimensional embedding"),
            (self.orphans, "stale chunks of an older version of their document (re-run ingest to remove them)"),
            (self.incomplete_sources, "documents missing chunks of their newest version (re-run ingest)"),
            (self.sourceless, "chunks without a source document id"),
        )
        if self.lexical is not None and not self.lexical.ok:
            found += [f"{line} (run `twostage verify --repair`)" for line in self.lexical.problems]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> list[str]:
        """What ``twostage verify`` prints."""
        lines = [
            f"collection:      {self.collection} ({self.nodes} nodes from {self.sources} documents)",
            f"embedding model: {self.embed_model or 'not recorded'} ({self.dimension or '?'} dimensions)",
        ]
        if self.lexical is not None:
            lines.append(f"lexical index:   {self.lexical.lexical_records} records")
        if self.unversioned:
            lines.append(f"note: {self.unversioned} chunks carry no doc hash (not written by twostage ingest)")
        lines += [f"problem: {problem}" for problem in self.problems] or ["ok: no problems found"]
        return lines


def _contract_problem(collection: Collection, embed_model: str) -> str | None:
    contract = CollectionContract.of(collection)
    if contract is None:
        return "the collection records no embedding model or dimension (not created by twostage ingest)"
    if model_identity(contract.embed_model) != model_identity(embed_model):
        return f"written with embedding model {contract.embed_model!r}, but the settings use {embed_model!r}"
    return None


def _stale_and_incomplete(sources: dict[str, _Version]) -> tuple[list[str], list[str]]:
    """Per source: chunks recorded under another hash than the newest write, and versions missing chunks."""
    orphans: list[str] = []
    incomplete: list[str] = []
    for source_id, version in sources.items():
        _, newest_hash, newest_count = version.newest()
        current = {node_id for node_id, (_, doc_hash, _) in version.chunks.items() if doc_hash == newest_hash}
        orphans.extend(node_id for node_id in version.chunks if node_id not in current)
        if len(current) != newest_count:
            incomplete.append(source_id)
    return orphans, incomplete


def verify_store(
    store: ChromaStore, *, embed_model: str, page_size: int = 1000, lexical: LexicalIndex | None = None
) -> VerifyReport:
    """Read every record of the store's collection and report what is inconsistent (see :class:`VerifyReport`).

    ``embed_model`` is the model the caller reads the collection with; ``page_size`` records are read per request;
    ``lexical``, when given, is compared with the records (ids and doc hashes).

    Raises:
        CollectionNotFoundError: the collection does not exist.
        ChromaUnavailableError: the store cannot be reached.
    """
    collection = store.with_retries(store.open_collection)
    indexed = None if lexical is None else lexical.versions()  # before Chroma: a record added meanwhile is not "extra"
    contract = CollectionContract.of(collection)
    dimension = contract.dimension if contract else None
    nodes, bad_embeddings, sourceless, unversioned = 0, [], [], 0
    sources: dict[str, _Version] = {}
    versions: dict[str, str] = {}  # what the lexical index must hold, from this same pass
    for page in store.pages(collection, ["embeddings", "metadatas"], page_size):
        for node_id, embedding, metadata in zip(page["ids"], page["embeddings"], page["metadatas"]):
            nodes += 1
            versions[node_id] = record_version(metadata)
            dimension = dimension or (len(embedding) if embedding is not None else None)
            if embedding is None or len(embedding) != dimension:
                bad_embeddings.append(node_id)
            metadata = metadata or {}
            source = metadata.get(SOURCE_KEY)
            if source in (None, "", "None"):
                sourceless.append(node_id)
            elif metadata.get(HASH_KEY) is None:
                unversioned += 1
            else:
                recorded = (float(metadata.get(STAMP_KEY) or 0.0), metadata[HASH_KEY], metadata.get(CHUNKS_KEY))
                sources.setdefault(str(source), _Version()).chunks[node_id] = recorded
    orphans, incomplete = _stale_and_incomplete(sources)
    return VerifyReport(
        collection=store.collection_name,
        nodes=nodes,
        sources=len(sources),
        embed_model=contract.embed_model if contract else None,
        dimension=dimension,
        contract_problem=_contract_problem(collection, embed_model),
        bad_embeddings=bad_embeddings,
        orphans=orphans,
        incomplete_sources=incomplete,
        sourceless=sourceless,
        unversioned=unversioned,
        lexical=None if indexed is None else drift_from(versions, indexed),
    )
