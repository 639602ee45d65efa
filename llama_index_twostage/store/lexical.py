"""The lexical side of stage 1: a BM25 index kept beside the Chroma collection, keyed by Chroma's record ids.

Chroma is the source of truth; this index is derived from it (the text each record's bi-encoder read, and the
record's ``twostage_doc_hash``), so it can always be repaired or rebuilt from Chroma alone (see
:mod:`llama_index_twostage.store.reconcile`). Stage 1 only needs the small :class:`LexicalIndex` interface, so a
server-side hybrid search (Chroma's own ``search`` where a deployment supports it) can take this one's place.

:class:`TantivyIndex` is that interface on `tantivy <https://github.com/quickwit-oss/tantivy-py>`_: BM25 (k1 1.2,
b 0.75), incremental add and delete by id, atomic commits, one writer and many readers across processes. Text is
analysed with English stemming and stop words; a query goes through the same analyser and becomes a disjunction of
its terms, so user text is never parsed as query syntax (``field:x``, ``AND``, quotes, ``*``, ``~``, ``^`` and
unbalanced parentheses are just characters).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

import tantivy

from llama_index_twostage.errors import LexicalIndexBusy, LexicalIndexError

logger = logging.getLogger(__name__)

ANALYZER = "twostage_english"
WRITER_HEAP_BYTES = 64_000_000  # tantivy's writer buffers this much before flushing a segment itself
_LONGEST_TOKEN = 40  # longer "words" (base64, hashes) are dropped, as tantivy's default analyser does


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

    def rebuilding(self) -> Iterator[LexicalIndex]:
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


def english_analyzer() -> tantivy.TextAnalyzer:
    """Words (letters and digits), lowercased, English stop words removed, Porter-stemmed."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(_LONGEST_TOKEN))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")  # raw: deletable by exact id
    builder.add_text_field("doc_hash", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("text", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    return builder.build()


class TantivyIndex:
    """A tantivy BM25 index in ``path`` (or in memory when ``path`` is None), owned here and released by
    :meth:`close`.

    Writes take tantivy's writer lock for one commit and release it, so another process (``twostage ingest`` beside
    a running service) can write in between; readers see each commit from their next search on.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path).expanduser()
        self._schema = _schema()
        self._analyzer = english_analyzer()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one tantivy writer per index: this process's writes take turns
        self._index: tantivy.Index | None = None
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
        try:
            if self.path is not None:
                self.path.mkdir(parents=True, exist_ok=True)
            index = tantivy.Index(self._schema, path=None if self.path is None else str(self.path), reuse=True)
        except (OSError, ValueError) as error:
            raise LexicalIndexError(
                f"cannot open {self.describe()}: {error}; check lexical_dir is a writable folder, or delete it and "
                "rebuild it from Chroma with `twostage reindex`"
            ) from error
        index.register_tokenizer(ANALYZER, self._analyzer)
        return index

    def _write(self, ids: Iterable[str], records: Sequence[LexicalRecord] = ()) -> None:
        """Delete ``ids``, add ``records``, commit: one atomic step for every reader."""
        with self._write_lock:
            self._write_locked(ids, records)

    def _writer(self, index: tantivy.Index) -> tantivy.IndexWriter:
        try:
            return index.writer(WRITER_HEAP_BYTES, 1)
        except ValueError as error:  # another process holds the writer lock
            raise LexicalIndexBusy(
                f"{self.describe()} is being written by another process ({error}); retry when it has finished"
            ) from error

    def _write_locked(self, ids: Iterable[str], records: Sequence[LexicalRecord], clear: bool = False) -> None:
        index = self.index
        writer = self._writer(index)
        try:
            if clear:
                writer.delete_all_documents()
            for record_id in ids:
                writer.delete_documents_by_term("id", record_id)
            for record in records:
                writer.add_document(tantivy.Document(id=record.id, doc_hash=record.doc_hash, text=record.text))
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
        return Counter(self._analyzer.analyze(query))

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

    @contextmanager
    def rebuilding(self) -> Iterator[TantivyIndex]:
        """This index emptied in place (one commit), to be filled again: not atomic for readers, which is why the
        pipeline keeps its on-disk index in a :class:`~llama_index_twostage.store.generations.LexicalFolder`."""
        with self._write_lock:
            self._write_locked((), (), clear=True)
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

    def __enter__(self) -> TantivyIndex:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
