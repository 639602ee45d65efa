"""Keeping the lexical index in step with Chroma, the source of truth.

Ingestion writes Chroma first and mirrors each write into the lexical index; a crash between the two leaves the
lexical side behind. :func:`find_drift` compares Chroma's ids and doc hashes with the lexical index's, and
:func:`repair` adds what is missing or out of date (text read back from Chroma) and deletes what Chroma no longer
holds. Ingestion repairs after every run, stage 1 when the counts differ on open (:func:`ensure_in_step`), and
``twostage verify --repair`` on demand; :func:`rebuild` (``twostage reindex``) starts over from Chroma alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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

logger = logging.getLogger(__name__)

_SHOWN_IDS = 5


def lexical_record(record_id: str, document: str | None, metadata: dict[str, Any] | None) -> LexicalRecord:
    """A Chroma record as the lexical index holds it: the text its bi-encoder read (metadata included, as embedded)."""
    node = node_from_record(record_id, document, metadata)
    return LexicalRecord(record_id, model_text(node) or "", str((metadata or {}).get(HASH_KEY) or ""))


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
        record_id: str((metadata or {}).get(HASH_KEY) or "")
        for page in store.pages(collection, ["metadatas"], page_size)
        for record_id, metadata in zip(page["ids"], page["metadatas"] or [])
    }


def find_drift(store: ChromaStore, collection: Collection, lexical: LexicalIndex, page_size: int) -> LexicalDrift:
    """Compare every id and doc hash of Chroma with the lexical index (reads both in full)."""
    truth = chroma_versions(store, collection, page_size)
    indexed = lexical.versions()
    return LexicalDrift(
        chroma_records=len(truth),
        lexical_records=len(indexed),
        missing=[record_id for record_id in truth if record_id not in indexed],
        extra=[record_id for record_id in indexed if record_id not in truth],
        changed=[record_id for record_id, version in truth.items() if indexed.get(record_id, version) != version],
    )


def _copy_from_chroma(
    store: ChromaStore,
    collection: Collection,
    lexical: LexicalIndex,
    ids: Sequence[str],
    page_size: int,
    progress: tqdm,
) -> None:
    for start in range(0, len(ids), page_size):
        batch = store.records(collection, ids[start : start + page_size], ["documents", "metadatas"], page_size)
        records = [lexical_record(*fields) for fields in zip(batch["ids"], batch["documents"], batch["metadatas"])]
        lexical.add(records)
        progress.update(len(ids[start : start + page_size]))


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
        _copy_from_chroma(store, collection, lexical, to_copy, page_size, progress)
    lexical.delete(drift.extra)
    if not drift.ok:
        logger.info("lexical index repaired: %s", "; ".join(drift.problems))
    return len(to_copy) + len(drift.extra)


def rebuild(
    store: ChromaStore, collection: Collection, lexical: LexicalIndex, *, page_size: int = 1000, show_progress: bool
) -> int:
    """Drop the lexical index and index every Chroma record again, a page at a time; returns the records indexed."""
    lexical.reset()
    total = store.with_retries(collection.count)
    indexed = 0
    with tqdm(total=total, desc="reindexing", unit="record", disable=not show_progress) as progress:
        for page in store.pages(collection, ["documents", "metadatas"], page_size):
            fields = zip(page["ids"], page["documents"] or [], page["metadatas"] or [])
            lexical.add([lexical_record(*record) for record in fields])
            indexed += len(page["ids"])
            progress.update(len(page["ids"]))
    return indexed


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
    drift = find_drift(store, collection, lexical, page_size)
    logger.warning(
        "the lexical index holds %d records, Chroma %d: repairing (%s)",
        lexical_count,
        chroma_count,
        "; ".join(drift.problems),
    )
    return repair(store, collection, lexical, drift, page_size=page_size)
