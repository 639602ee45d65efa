"""The lexical side of stage 1: a BM25 index kept beside the Chroma collection, keyed by Chroma's record ids.

Chroma is the source of truth; this index is derived from it (the text each record's bi-encoder read, and the
record's ``twostage_doc_hash``), so it can always be repaired or rebuilt from Chroma alone (see
:mod:`llama_index_twostage.store.reconcile`). Stage 1 only needs the small :class:`LexicalIndex` interface, so a
server-side hybrid search (Chroma's own ``search`` where a deployment supports it) can take this one's place.

:class:`TantivyIndex` is that interface on `tantivy <https://github.com/quickwit-oss/tantivy-py>`_: BM25 (k1 1.2,
b 0.75), incremental add and delete by id, atomic commits, one writer and many readers across processes. Text is
analysed per ``lexical_language`` (:mod:`~llama_index_twostage.store.analysis`; English stemming and stop words by
default), and the index records its analyser: opening it with another is an error that asks for ``twostage
reindex``. A query goes through the same analyser and becomes a disjunction of its terms, so user text is never
parsed as query syntax (``field:x``, ``AND``, quotes, ``*``, ``~``, ``^`` and unbalanced parentheses are just
characters). tantivy's failures (a folder removed under a live process, a full disk, another writer) end in one
:class:`~llama_index_twostage.errors.LexicalIndexError` that says what to do.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import tantivy

from llama_index_twostage.closing import Closing
from llama_index_twostage.errors import LexicalIndexBusy, LexicalIndexError
from llama_index_twostage.store.analysis import Analyser

logger = logging.getLogger(__name__)

WRITER_HEAP_BYTES = 64_000_000  # tantivy's writer buffers this much before flushing a segment itself
RECORD_FILE = "twostage-lexical.json"  # what the library records in an index it built: its analyser
TANTIVY_META = "meta.json"  # present in every tantivy index folder
LEGACY_ANALYSER = "twostage_english"  # indexes built before the analyser was recorded had this one


@dataclass(frozen=True)
class LexicalRecord:
    """One Chroma record as the lexical index holds it: its id, the text the bi-encoder read, its version."""

    id: str
    text: str
    doc_hash: str = ""  # ``twostage_doc_hash`` of the record; empty for records written by other tools


@dataclass(frozen=True)
class LexicalHits:
    """Ids and BM25 scores, best first; ``terms`` is how many searchable terms the query had (0: none, e.g. only
    stop words or punctuation, and no hits)."""

    ids: list[str]
    scores: list[float]
    terms: int


@runtime_checkable
class LexicalIndex(Protocol):
    """What stage 1 and the reconciliation need from a lexical index."""

    def describe(self) -> str: ...

    def add(self, records: Sequence[LexicalRecord]) -> None:
        """Add or replace these records (idempotent) and commit."""

    def delete(self, ids: Sequence[str]) -> None:
        """Remove these ids (absent ones are ignored) and commit."""

    def rebuilding(self) -> AbstractContextManager[LexicalIndex]:
        """A context manager giving an empty index to fill from Chroma; what it holds replaces this index on a clean
        exit (atomically, where the index lives in a folder of generations)."""

    def feed_mark(self) -> float | None:
        """The newest change-feed stamp this index has applied (None: unknown, a full reconcile must answer)."""

    def set_feed_mark(self, mark: float) -> None: ...

    def count(self) -> int: ...

    def versions(self) -> dict[str, str]:
        """Every id the index holds with its recorded doc hash."""

    def search(self, query: str, limit: int) -> LexicalHits: ...

    def close(self) -> None: ...


def _schema(analyser: Analyser) -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")  # raw: deletable by exact id
    builder.add_text_field("doc_hash", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("text", stored=False, tokenizer_name=analyser.name, index_option="freq")
    return builder.build()


class TantivyIndex(Closing):
    """A tantivy BM25 index in ``path`` (or in memory when ``path`` is None), owned here and released by
    :meth:`close`.

    Writes take tantivy's writer lock for one commit and release it, so another process (``twostage ingest`` beside
    a running service) can write in between; readers see each commit from their next search on.
    """

    def __init__(self, path: str | Path | None, analyser: Analyser | None = None) -> None:
        self.path = None if path is None else Path(path).expanduser()
        self.analyser = analyser or Analyser()
        self._schema = _schema(self.analyser)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one tantivy writer per index: this process's writes take turns
        self._index: tantivy.Index | None = None
        self._was_open = False  # once open, a vanished folder is an error, never silently a new, empty index
        self._mark: float | None = None

    def describe(self) -> str:
        return "the in-memory lexical index" if self.path is None else f"the lexical index at {str(self.path)!r}"

    def __repr__(self) -> str:
        return f"TantivyIndex({self.describe()})"

    @property
    def index(self) -> tantivy.Index:
        """The tantivy index, opened (or created) on first use."""
        with self._lock:
            if self._index is None:
                self._index = self._open()
            return self._index

    def _open(self) -> tantivy.Index:
        if self.path is None:
            index = tantivy.Index(self._schema)
        else:
            self._check_folder()
            created = not (self.path / TANTIVY_META).is_file()
            if created and self._was_open:
                raise self._gone("nothing is there now")
            with self._faults("open"):
                self.path.mkdir(parents=True, exist_ok=True)
                index = tantivy.Index(self._schema, path=str(self.path), reuse=True)
                if created:
                    (self.path / RECORD_FILE).write_text(json.dumps({"analyser": self.analyser.name}))
        index.register_tokenizer(self.analyser.name, self.analyser.analyzer)
        self._was_open = True
        return index

    def _check_folder(self) -> None:
        """The index's path is a folder (or nothing yet), built with this index's analyser."""
        assert self.path is not None
        if self.path.exists() and not self.path.is_dir():
            raise LexicalIndexError(
                f"{self.describe()} cannot be opened: {str(self.path)!r} is a file, not a folder; move it away or set "
                "lexical_dir to another folder, then run `twostage reindex` to build the index from Chroma"
            )
        if not (self.path / TANTIVY_META).is_file():
            return
        try:
            built_with = json.loads((self.path / RECORD_FILE).read_text()).get("analyser")
        except FileNotFoundError:
            built_with = LEGACY_ANALYSER
        except (OSError, ValueError, AttributeError) as error:
            raise LexicalIndexError(
                f"{self.describe()} has an unreadable {RECORD_FILE} ({error}): run `twostage reindex` to rebuild it"
            ) from None
        if built_with != self.analyser.name:
            language = str(built_with).removeprefix("twostage_")
            raise LexicalIndexError(
                f"{self.describe()} was built for lexical_language {language!r}, but lexical_language is "
                f"{self.analyser.language!r}: run `twostage reindex` to rebuild it for {self.analyser.language!r}, "
                f"or set lexical_language to {language!r}"
            )

    @contextmanager
    def _faults(self, doing: str) -> Iterator[None]:
        """tantivy's failures of the folder, the lock or the disk (it raises them all as ``ValueError``) as one
        :class:`LexicalIndexError` that says what to do; anything else (a bad record, say) passes unchanged."""
        try:
            yield
        except (OSError, ValueError) as error:
            failure = self._failed(doing, error)
            if failure is None:
                raise
            raise failure from None

    def _gone(self, reason: str) -> LexicalIndexError:
        return LexicalIndexError(
            f"{self.describe()} is gone: its folder was removed while in use ({reason}); run `twostage reindex` to "
            "rebuild it from Chroma"
        )

    def _failed(self, doing: str, error: Exception) -> LexicalIndexError | None:
        reason = " ".join(str(error).split())[:200]
        if self._index is not None and self.path is not None and not self.path.is_dir():
            self._index = None  # the next use opens whatever is there then (a reindex by another process, say)
            return self._gone(reason)
        if "LockBusy" in reason:
            return LexicalIndexBusy(
                f"{self.describe()} is being written by another process ({reason}); retry when it has finished"
            )
        if "No space left" in reason or "os error 28" in reason or "StorageFull" in reason:
            free_mb = shutil.disk_usage(self.path).free / 1e6 if self.path is not None else 0
            return LexicalIndexError(
                f"{self.describe()} could not {doing}: the disk is full ({free_mb:,.0f} MB free); free space and run "
                "the same command again (Chroma keeps what was stored, and the lexical index catches up with it)"
            )
        if isinstance(error, OSError) or "IO error" in reason or "IoError" in reason:
            return LexicalIndexError(
                f"{self.describe()} failed to {doing} ({reason}); check lexical_dir is a writable folder, or run "
                "`twostage reindex` to rebuild the index from Chroma"
            )
        return None

    def _write(self, ids: Iterable[str], records: Sequence[LexicalRecord] = ()) -> None:
        """Delete ``ids``, add ``records``, commit: one atomic step for every reader."""
        with self._write_lock:
            self._write_locked(ids, records)

    def _write_locked(self, ids: Iterable[str], records: Sequence[LexicalRecord]) -> None:
        index = self.index
        with self._faults("take the writer lock"):  # held by another process, or the folder is gone
            writer = index.writer(WRITER_HEAP_BYTES, 1)
        with self._faults("write"):
            try:
                for record_id in ids:
                    writer.delete_documents_by_term("id", record_id)
                for record in records:
                    text = self.analyser.index_text(record.text)
                    writer.add_document(tantivy.Document(id=record.id, doc_hash=record.doc_hash, text=text))
                writer.commit()
            except BaseException:
                writer.rollback()  # nothing of this batch lands; the next ingestion's reconciliation sees the gap
                raise
            finally:
                writer.wait_merging_threads()  # releases the writer lock, even when the batch failed
            index.reload()

    def add(self, records: Sequence[LexicalRecord]) -> None:
        latest = list({record.id: record for record in records}.values())  # an id given twice is added once
        if latest:
            self._write([record.id for record in latest], latest)

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._write(ids)

    def _searcher(self) -> tantivy.Searcher:
        index = self.index
        with self._faults("read"):
            index.reload()  # sees commits of other processes (0.1 ms)
            return index.searcher()

    def count(self) -> int:
        return int(self._searcher().num_docs)

    def versions(self) -> dict[str, str]:
        """Every record's id and doc hash (0.3 s per 100K records)."""
        searcher = self._searcher()
        total = searcher.num_docs
        if not total:
            return {}
        hits = searcher.search(tantivy.Query.all_query(), limit=total, count=False).hits
        versions = {}
        for _, address in hits:
            stored = searcher.doc(address)
            versions[stored["id"][0]] = stored["doc_hash"][0]
        return versions

    def terms(self, query: str) -> Counter[str]:
        """The query's searchable terms and how often each occurs (as BM25 weighs a repeated term)."""
        return Counter(self.analyser.terms(query))

    def search(self, query: str, limit: int) -> LexicalHits:
        """The ``limit`` best records for ``query`` by BM25; the query is analysed as text, never parsed."""
        terms = self.terms(query)
        if not terms:
            return LexicalHits([], [], 0)
        clauses = []
        for term, times in terms.items():
            clause = tantivy.Query.term_query(self._schema, "text", term)
            clauses.append((tantivy.Occur.Should, clause if times == 1 else tantivy.Query.boost_query(clause, times)))
        searcher = self._searcher()
        hits = searcher.search(tantivy.Query.boolean_query(clauses), limit=limit, count=False).hits
        ids = [searcher.doc(address)["id"][0] for _, address in hits]
        return LexicalHits(ids, [float(score) for score, _ in hits], len(terms))

    def reset(self) -> None:
        """Close and delete the index folder, so a rebuild starts from nothing (even from a damaged index, or one
        built with another analyser); a file in its place is not the library's to delete."""
        self.close()
        self._was_open = False  # a rebuild creates the index anew
        if self.path is not None and self.path.exists():
            if not self.path.is_dir():
                self._check_folder()  # raises: says to move the file away
            shutil.rmtree(self.path)

    @contextmanager
    def rebuilding(self) -> Iterator[TantivyIndex]:
        """This index reset (see :meth:`reset`) to be filled again: not atomic for readers, which is why the
        pipeline keeps its on-disk index in a :class:`~llama_index_twostage.store.generations.LexicalFolder`."""
        self.reset()
        self._mark = None
        yield self

    def feed_mark(self) -> float | None:
        """Kept in memory: a bare index is this process's own (a folder of generations keeps it on disk)."""
        return self._mark

    def set_feed_mark(self, mark: float) -> None:
        self._mark = mark

    def close(self) -> None:
        """Release the index (its files and readers); it reopens on next use."""
        with self._lock:
            self._index = None
