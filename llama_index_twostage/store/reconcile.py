"""Keeping the lexical index in step with Chroma, the source of truth.

Routinely the index follows Chroma through the change feed (:mod:`llama_index_twostage.store.feed`). This is the
repair for what the feed cannot answer (records written by other tools, an index without a feed mark):
:func:`find_drift` compares Chroma's ids and doc hashes with the lexical index's, and :func:`repair` adds what is
missing or out of date (text read back from Chroma) and deletes what Chroma no longer holds; :func:`reconcile` does
both (``twostage verify --repair``). :func:`rebuild` (``twostage reindex``) builds a new index from Chroma alone.

Other processes write while this runs, so the lexical ids are read before Chroma's (a record added in between is
then missing, never extra) and every id about to be deleted is looked up in Chroma once more: a record Chroma holds
when the repair finishes is never deleted from the lexical index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from llama_index_twostage.nodes import model_text, node_from_record
from llama_index_twostage.store.chroma import ChromaStore
from llama_index_twostage.store.contract import HASH_KEY, STAMP_KEY
from llama_index_twostage.store.lexical import LexicalIndex, LexicalRecord

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import GetResult, Include

logger = logging.getLogger(__name__)

_SHOWN_IDS = 5
TEXT_FIELDS: Include = ["documents", "metadatas"]  # what a lexical record is made from


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


def record_stamp(metadata: dict[str, Any] | None) -> float:
    """When ingestion wrote a record (0 for records of other tools): the change feed's clock."""
    return float((metadata or {}).get(STAMP_KEY) or 0.0)


def chroma_versions(store: ChromaStore, collection: Collection, page_size: int) -> tuple[dict[str, str], float]:
    """Every record id in Chroma with its doc hash (empty for records written by other tools), and the newest
    stamp among them."""
    versions: dict[str, str] = {}
    newest = 0.0
    for page in store.pages(collection, ["metadatas"], page_size):
        for record_id, metadata in zip(page["ids"], page["metadatas"] or []):
            versions[record_id] = record_version(metadata)
            newest = max(newest, record_stamp(metadata))
    return versions, newest


def find_drift(store: ChromaStore, collection: Collection, lexical: LexicalIndex, page_size: int) -> LexicalDrift:
    """Compare every id and doc hash of Chroma with the lexical index (reads both in full, the index first)."""
    indexed = lexical.versions()
    return drift_from(chroma_versions(store, collection, page_size)[0], indexed)


def drift_from(truth: dict[str, str], indexed: dict[str, str]) -> LexicalDrift:
    """How the lexical index's ids and doc hashes (``indexed``, read first) differ from Chroma's (``truth``)."""
    return LexicalDrift(
        chroma_records=len(truth),
        lexical_records=len(indexed),
        missing=[record_id for record_id in truth if record_id not in indexed],
        extra=[record_id for record_id in indexed if record_id not in truth],
        changed=[record_id for record_id, version in truth.items() if indexed.get(record_id, version) != version],
    )


def _index_pages(pages: Iterable[GetResult], lexical: LexicalIndex, progress: tqdm) -> tuple[int, float]:
    """Add each page of Chroma records to the lexical index (a commit per page); returns the records added and the
    newest stamp among them."""
    added, newest = 0, 0.0
    for page in pages:
        lexical.add([lexical_record(*record) for record in zip(page["ids"], page["documents"], page["metadatas"])])
        added += len(page["ids"])
        newest = max([newest, *map(record_stamp, page["metadatas"] or [])])
        progress.update(len(page["ids"]))
    return added, newest


def scan_mark(newest: float, started: float) -> float:
    """The feed mark after a full scan of Chroma: its newest stamp, but no later than the scan's start, so that a
    write the scan's pages missed (records moving under the paging of a long scan) is read from the feed again."""
    return min(newest, started)


def still_held(store: ChromaStore, collection: Collection, ids: Sequence[str], page_size: int) -> set[str]:
    """The ids of ``ids`` that Chroma holds now (read by id, just before a deletion)."""
    return {record_id for page in store.records(collection, ids, [], page_size) for record_id in page["ids"]}


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
        _index_pages(store.records(collection, to_copy, TEXT_FIELDS, page_size), lexical, progress)
    held = still_held(store, collection, drift.extra, page_size)
    lexical.delete([record_id for record_id in drift.extra if record_id not in held])
    return len(to_copy) + len(drift.extra) - len(held)


def reconcile(
    store: ChromaStore, collection: Collection, lexical: LexicalIndex, *, page_size: int, show_progress: bool = False
) -> int:
    """Find how the lexical index differs from Chroma and repair it, saying so in a warning when it did; the index's
    feed mark becomes the newest stamp Chroma holds. Returns the records added, replaced or deleted (0 when the two
    were in step)."""
    started = time.time()
    indexed = lexical.versions()
    truth, newest = chroma_versions(store, collection, page_size)
    drift = drift_from(truth, indexed)
    lexical.set_feed_mark(max(scan_mark(newest, started), lexical.feed_mark() or 0.0))
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
    """Index every Chroma record again, a page at a time, into a new index that replaces the live one when complete
    (:meth:`LexicalIndex.rebuilding`); returns the records indexed. What is written meanwhile, the feed brings."""
    started = time.time()
    total = store.with_retries(collection.count)
    with (
        lexical.rebuilding() as fresh,
        tqdm(total=total, desc="reindexing", unit="record", disable=not show_progress) as progress,
    ):
        indexed, newest = _index_pages(store.pages(collection, TEXT_FIELDS, page_size), fresh, progress)
        fresh.set_feed_mark(scan_mark(newest, started))
    return indexed
