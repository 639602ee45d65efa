"""Keeping the lexical index in step with Chroma, the source of truth.

Ingestion writes Chroma first and mirrors each write into the lexical index; a crash between the two leaves the
lexical side behind. :func:`find_drift` compares Chroma's ids and doc hashes with the lexical index's, and
:func:`repair` adds what is missing or out of date (text read back from Chroma) and deletes what Chroma no longer
holds; :func:`reconcile` does both. Ingestion reconciles after every run, stage 1 when the counts differ on open
(:func:`ensure_in_step`), and ``twostage verify --repair`` on demand; :func:`rebuild` (``twostage reindex``)
starts over from Chroma alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from llama_index_twostage.errors import LexicalIndexError
from llama_index_twostage.nodes import model_text, node_from_record
from llama_index_twostage.store.chroma import ChromaStore
from llama_index_twostage.store.contract import HASH_KEY
from llama_index_twostage.store.lexical import LexicalIndex, LexicalRecord

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import GetResult, Include

logger = logging.getLogger(__name__)

_SHOWN_IDS = 5
_TEXT: Include = ["documents", "metadatas"]  # what a lexical record is made from


def record_version(metadata: dict[str, Any] | None) -> str:
    """The version both indexes record for a Chroma record: its doc hash (empty for records of other tools)."""
    return str((metadata or {}).get(HASH_KEY) or "")


def lexical_record(record_id: str, document: str | None, metadata: dict[str, Any] | None) -> LexicalRecord:
    """A Chroma record as the lexical index holds it: the text its bi-encoder read (metadata included, as embedded)."""
    node = node_from_record(record_id, document, metadata)
    return LexicalRecord(record_id, model_text(node) or "", record_version(metadata))


def named_ids(*kinds: tuple[Sequence[str], str]) -> list[str]:
    """``"<count> <what>: <first ids>"`` for each kind of problem that has ids."""
    lines = []
    for ids, what in kinds:
        if ids:
            more = ", ..." if len(ids) > _SHOWN_IDS else ""
            lines.append(f"{len(ids)} {what}: {', '.join(ids[:_SHOWN_IDS])}{more}")
    return lines


@dataclass(frozen=True)
class LexicalDrift:
    """How the lexical index differs from Chroma; ``ok`` when it holds exactly Chroma's records and versions."""

    chroma_records: int
    lexical_records: int
    missing: list[str]  # in Chroma, not in the lexical index
    extra: list[str]  # in the lexical index, no longer in Chroma
    changed: list[str]  # in both, but indexed under another doc hash

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    @property
    def problems(self) -> list[str]:
        """One line per kind of difference, with a few of the ids concerned."""
        return named_ids(
            (self.missing, "records missing from the lexical index"),
            (self.extra, "lexical records of chunks Chroma no longer holds"),
            (self.changed, "lexical records of an older version of their chunk"),
        )


def chroma_versions(store: ChromaStore, collection: Collection, page_size: int) -> dict[str, str]:
    """Every record id in Chroma with its doc hash (empty for records written by other tools)."""
    return {
        record_id: record_version(metadata)
        for page in store.pages(collection, ["metadatas"], page_size)
        for record_id, metadata in zip(page["ids"], page["metadatas"] or [])
    }


def find_drift(store: ChromaStore, collection: Collection, lexical: LexicalIndex, page_size: int) -> LexicalDrift:
    """Compare every id and doc hash of Chroma with the lexical index (reads both in full)."""
    return drift_from(chroma_versions(store, collection, page_size), lexical)


def drift_from(truth: dict[str, str], lexical: LexicalIndex) -> LexicalDrift:
    """How ``lexical`` differs from Chroma's ids and doc hashes (``truth``, read by the caller)."""
    indexed = lexical.versions()
    return LexicalDrift(
        chroma_records=len(truth),
        lexical_records=len(indexed),
        missing=[record_id for record_id in truth if record_id not in indexed],
        extra=[record_id for record_id in indexed if record_id not in truth],
        changed=[record_id for record_id, version in truth.items() if indexed.get(record_id, version) != version],
    )


def _index_pages(pages: Iterable[GetResult], lexical: LexicalIndex, progress: tqdm) -> int:
    """Add each page of Chroma records to the lexical index (a commit per page); returns the records added."""
    added = 0
    for page in pages:
        lexical.add([lexical_record(*record) for record in zip(page["ids"], page["documents"], page["metadatas"])])
        added += len(page["ids"])
        progress.update(len(page["ids"]))
    return added


def repair(
    store: ChromaStore,
    collection: Collection,
    lexical: LexicalIndex,
    drift: LexicalDrift,
    *,
    page_size: int = 1000,
    show_progress: bool = False,
) -> int:
    """Bring the lexical index to Chroma's state; returns how many records were added, replaced or deleted."""
    to_copy = [*drift.missing, *drift.changed]
    with tqdm(total=len(to_copy), desc="lexical repair", unit="record", disable=not show_progress) as progress:
        _index_pages(store.records(collection, to_copy, _TEXT, page_size), lexical, progress)
    lexical.delete(drift.extra)
    return len(to_copy) + len(drift.extra)


def reconcile(
    store: ChromaStore, collection: Collection, lexical: LexicalIndex, *, page_size: int, show_progress: bool = False
) -> int:
    """Find how the lexical index differs from Chroma and repair it, saying so in a warning when it did; returns
    the records added, replaced or deleted (0 when the two were in step)."""
    drift = find_drift(store, collection, lexical, page_size)
    if drift.ok:
        return 0
    logger.warning(
        "the lexical index (%d records) was out of step with Chroma (%d), repairing: %s",
        drift.lexical_records,
        drift.chroma_records,
        "; ".join(drift.problems),
    )
    return repair(store, collection, lexical, drift, page_size=page_size, show_progress=show_progress)


def rebuild(
    store: ChromaStore, collection: Collection, lexical: LexicalIndex, *, page_size: int = 1000, show_progress: bool
) -> int:
    """Drop the lexical index and index every Chroma record again, a page at a time; returns the records indexed."""
    lexical.reset()
    total = store.with_retries(collection.count)
    with tqdm(total=total, desc="reindexing", unit="record", disable=not show_progress) as progress:
        return _index_pages(store.pages(collection, _TEXT, page_size), lexical, progress)


def ensure_in_step(store: ChromaStore, collection: Collection, lexical: LexicalIndex, *, page_size: int = 1000) -> int:
    """Before the first lexical search: repair a lexical index whose count differs from Chroma's.

    An empty index beside a full collection is not rebuilt silently on a query (at 100K records that takes a
    while): it is an error that says to run ``twostage reindex``, unless the store lives in memory (its index
    cannot have been built before). Returns the records repaired.
    """
    chroma_count = store.with_retries(collection.count)
    lexical_count = lexical.count()
    if chroma_count == lexical_count:
        return 0
    if lexical_count == 0 and store.mode != "memory":
        raise LexicalIndexError(
            f"{lexical.describe()} is empty but collection {store.collection_name!r} holds {chroma_count} records: "
            "build it from Chroma with `twostage reindex` (same settings), or set stage1_mode='dense'"
        )
    return reconcile(store, collection, lexical, page_size=page_size)
