"""The change feed through Chroma: how the lexical index on every host follows every writer.

Chroma holds the feed, so any process on any host can read it. Every record ingestion writes carries the time of
that write (``twostage_ingested_at``); every deletion first leaves a tombstone with its time in a sibling collection
(``<collection>-twostage-deleted``). An index remembers the newest stamp it applied (its mark). Catching up reads the
records and tombstones stamped since ``mark - margin`` (the margin covers writers whose clocks disagree and writes
still in flight), re-reads each changed id from Chroma and applies what Chroma holds now: the cost follows the
changes, not the collection, and applying a change twice changes nothing. An index without a mark (built by an
older version, or never reconciled) cannot be answered by the feed: the full reconcile answers it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from llama_index_twostage.errors import LexicalIndexBusy, LexicalIndexError
from llama_index_twostage.store.chroma import ChromaStore
from llama_index_twostage.store.contract import STAMP_KEY
from llama_index_twostage.store.lexical import LexicalIndex
from llama_index_twostage.store.reconcile import TEXT_FIELDS, lexical_record, reconcile, record_version

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

logger = logging.getLogger(__name__)

TOMBSTONE_SUFFIX = "-twostage-deleted"
FEED_MARGIN_S = 60.0  # clock disagreement between writers plus the longest write in flight
TOMBSTONE_RETENTION_S = 30 * 86400.0  # an index whose mark is older is reconciled in full
_COMPARE_ABOVE = 1000  # more changes than this to read back: first compare versions with the whole index (0.3 s/100K)
_WRITER_PATIENCE_S = 30.0  # how long a writer waits for another process's lexical write before leaving it to later


def stamp_now() -> float:
    """A write's stamp, to the millisecond: Chroma returns a stored float a few ulps off, which rounds back."""
    return round(time.time(), 3)


def tombstone_collection_name(collection_name: str) -> str:
    return f"{collection_name}{TOMBSTONE_SUFFIX}"


def _tombstones(store: ChromaStore, *, create: bool) -> Collection | None:
    from chromadb.errors import NotFoundError

    name = tombstone_collection_name(store.collection_name)
    client = store.client
    if create:
        return store.with_retries(
            partial(
                client.get_or_create_collection,
                name,
                metadata={"twostage:tombstones_of": store.collection_name},
                embedding_function=None,
            )
        )

    def existing() -> Collection | None:
        try:
            return client.get_collection(name, embedding_function=None)
        except NotFoundError:  # no deletion yet
            return None

    return store.with_retries(existing)


def leave_tombstones(store: ChromaStore, ids: Sequence[str], stamp: float) -> None:
    """Record that ``ids`` are being deleted at ``stamp`` (before the deletion, so no host can miss it); tombstones
    older than the retention are dropped on the way."""
    if not ids:
        return
    tombstones = _tombstones(store, create=True)
    assert tombstones is not None
    upsert = partial(
        tombstones.upsert, ids=list(ids), embeddings=[[1.0]] * len(ids), metadatas=[{STAMP_KEY: stamp}] * len(ids)
    )
    store.with_retries(upsert)
    store.with_retries(partial(tombstones.delete, where={STAMP_KEY: {"$lt": stamp - TOMBSTONE_RETENTION_S}}))


@dataclass(frozen=True)
class Changes:
    """What the feed holds since a stamp: record id -> stamp of its latest write (and the version it wrote), and
    of its tombstone."""

    written: dict[str, float] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def newest(self) -> float | None:
        stamps = [*self.written.values(), *self.deleted.values()]
        return max(stamps) if stamps else None


def _stamped_since(
    store: ChromaStore, collection: Collection, since: float, page_size: int
) -> tuple[dict[str, float], dict[str, str]]:
    """Record id -> stamp, and id -> version, of the records stamped at ``since`` or later (metadata only, paged)."""
    stamps: dict[str, float] = {}
    versions: dict[str, str] = {}
    for page in store.pages(collection, ["metadatas"], page_size, where={STAMP_KEY: {"$gte": since}}):
        for record_id, metadata in zip(page["ids"], page["metadatas"] or []):
            stamps[record_id] = round(float(metadata[STAMP_KEY]), 3)
            versions[record_id] = record_version(metadata)
    return stamps, versions


def changes_since(
    store: ChromaStore,
    collection: Collection,
    since: float,
    page_size: int = 1000,
    tombstones: Collection | None = None,
) -> Changes:
    """Records written and tombstones left at ``since`` or later (indexed metadata reads); ``tombstones``: the
    sibling collection when the caller holds it (else it is looked up)."""
    if tombstones is None:
        tombstones = _tombstones(store, create=False)
    deleted = {} if tombstones is None else _stamped_since(store, tombstones, since, page_size)[0]
    written, versions = _stamped_since(store, collection, since, page_size)
    return Changes(written, deleted, versions)


class LexicalFollower:
    """Keeps one lexical index in step with Chroma through the feed; one per index in a process (thread-safe).

    Args:
        store: the Chroma store, the source of truth.
        lexical: the index that follows it.
        refresh_s: at most how stale a query may find the index (``lexical_refresh_s``; 0: check every query).
        page_size: records read back from Chroma per request.
        margin_s: how far before its mark the index reads the feed again.
    """

    def __init__(
        self,
        store: ChromaStore,
        lexical: LexicalIndex,
        *,
        refresh_s: float = 5.0,
        page_size: int = 1000,
        margin_s: float = FEED_MARGIN_S,
    ) -> None:
        self.store = store
        self.lexical = lexical
        self.refresh_s = refresh_s
        self.page_size = page_size
        self.margin_s = margin_s
        self._applied: set[tuple[str, float]] = set()  # (id, stamp) of changes applied or mirrored, within the margin
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._warned: set[str] = set()
        self._tombstones: Collection | None = None  # looked up until a deletion has created it

    def mirrored(self, ids: Sequence[str], stamp: float) -> None:
        """Changes a writer of this process applied to the index itself: the feed need not read them back."""
        with self._lock:
            self._applied.update((record_id, stamp) for record_id in ids)

    def catch_up(self, collection: Collection) -> int | None:
        """Apply the feed since the index's mark; the changes applied, or None when the index has no mark (or one
        older than the tombstones kept), which only a full reconcile can answer."""
        mark = self.lexical.feed_mark()
        if mark is None or time.time() - mark > TOMBSTONE_RETENTION_S:
            return None
        if self._tombstones is None:
            self._tombstones = _tombstones(self.store, create=False)
        changes = changes_since(self.store, collection, mark - self.margin_s, self.page_size, self._tombstones)
        with self._lock:
            pending = [
                change
                for kind in (changes.written, changes.deleted)
                for change in kind.items()
                if change not in self._applied
            ]
        if len(pending) > _COMPARE_ABOVE:  # e.g. a fresh process after a large ingest: most are indexed already
            pending = self._not_indexed(pending, changes)
        ids = list(dict.fromkeys(record_id for record_id, _ in pending))
        records = [
            lexical_record(*record)
            for page in self.store.records(collection, ids, TEXT_FIELDS, self.page_size)
            for record in zip(page["ids"], page["documents"], page["metadatas"])
        ]
        held = {record.id for record in records}
        gone = [record_id for record_id in ids if record_id not in held]  # absent from Chroma, checked by id
        self.lexical.add(records)
        self.lexical.delete(gone)
        newest = max(mark, changes.newest or mark)
        if newest > mark:
            self.lexical.set_feed_mark(newest)
        with self._lock:
            # a tombstone whose id Chroma still holds (re-added, or its deletion in flight) is read again next time
            self._applied.update(
                (record_id, stamp)
                for record_id, stamp in pending
                if record_id not in held or changes.written.get(record_id) == stamp
            )
            horizon = newest - self.margin_s
            self._applied = {change for change in self._applied if change[1] >= horizon}
        return len(ids)

    def _not_indexed(self, pending: list[tuple[str, float]], changes: Changes) -> list[tuple[str, float]]:
        """The changes the index does not hold yet: a written record whose id (content-derived) the index holds at
        the same version is recorded as applied instead of read back."""
        indexed = self.lexical.versions()
        held = [
            (record_id, stamp)
            for record_id, stamp in pending
            if record_id not in changes.deleted and indexed.get(record_id) == changes.versions.get(record_id)
        ]
        with self._lock:
            self._applied.update(held)
        skipped = set(held)
        return [change for change in pending if change not in skipped]

    def follow(self, collection: Collection) -> int:
        """A writer's step after its writes: catch up through the feed, or reconcile in full where it cannot answer;
        waits for another process's lexical write, then leaves the rest to the next catch-up. Returns the lexical
        records this step had to fix (0 when every write was mirrored)."""
        deadline = time.monotonic() + _WRITER_PATIENCE_S
        delay = 0.05
        while True:
            try:
                applied = self.catch_up(collection)
                if applied is None:
                    applied = reconcile(self.store, collection, self.lexical, page_size=self.page_size)
                return applied
            except LexicalIndexBusy as error:
                if time.monotonic() > deadline:
                    logger.warning("%s; the lexical index catches up on its next refresh", error)
                    return 0
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def open_check(self, collection: Collection, *, own_index: bool) -> None:
        """Before a retriever's first lexical search: catch up, then compare counts. An empty index beside a full
        collection is an error that says to run ``twostage reindex`` (unless the index is this process's own, in
        memory: then it is built here); counts that still differ are a warning naming ``verify --repair``."""
        self.refresh(collection, may_rebuild=own_index, force=True)
        chroma_count = self.store.with_retries(collection.count)
        lexical_count = self.lexical.count()
        if lexical_count == 0 and chroma_count:
            raise LexicalIndexError(
                f"{self.lexical.describe()} is empty but collection {self.store.collection_name!r} holds "
                f"{chroma_count} records: build it from Chroma with `twostage reindex` (same settings), or set "
                "stage1_mode='dense'"
            )
        if lexical_count != chroma_count:
            self._warn_once(
                "count",
                "%s holds %d records, collection %r %d (records written by other tools, or a write in flight): "
                "`twostage verify --repair` brings it in step",
                self.lexical.describe(),
                lexical_count,
                self.store.collection_name,
                chroma_count,
            )

    def refresh(self, collection: Collection, *, may_rebuild: bool = False, force: bool = False) -> None:
        """A query's step: at most every ``refresh_s``, catch up through the feed. Never waits for the writer lock,
        never fails the query: a busy or failing index answers from what it holds and catches up next time.
        ``may_rebuild``: the index is this process's own (in memory), so a full reconcile may answer for the feed."""
        now = time.monotonic()
        if not force and self._checked_at is not None and now - self._checked_at < self.refresh_s:
            return
        self._checked_at = now
        try:
            if may_rebuild:
                self.follow(collection)
            elif self.catch_up(collection) is None:
                self._warn_once(
                    "unknown",
                    "%s has no change-feed mark (built by an older version?): it answers from what it holds; "
                    "`twostage verify --repair` brings it in step",
                    self.lexical.describe(),
                )
        except LexicalIndexBusy:
            logger.debug("%s is being written by another process: catching up later", self.lexical.describe())
        except (LexicalIndexError, OSError, ValueError) as error:
            self._warn_once("failed", "the lexical index could not catch up (%s): answering from what it holds", error)

    def _warn_once(self, key: str, message: str, *arguments: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *arguments)
