"""Where a host keeps its BM25 index on disk: a folder the library owns, holding generations behind a pointer.

Layout of ``<lexical_dir>/<collection>/``::

    .twostage-lexical   the marker: the library writes into, and prunes, only folders that carry it
    CURRENT             the live generation's name; a reindex replaces it atomically (``os.replace``)
    gen-<hex>/          a tantivy index, and the change-feed mark it has applied (``feed-mark``)

A reindex builds a new generation beside the live one and swaps the pointer, so a concurrent query sees the old
index or the new one, never a partial one; the generation before the live one is kept (a query may still be reading
it) and older ones are removed. Reading never creates anything: an index that was never written reads as empty.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llama_index_twostage.closing import Closing
from llama_index_twostage.errors import LexicalIndexBusy, LexicalIndexError
from llama_index_twostage.store.analysis import Analyser, LexicalLanguage
from llama_index_twostage.store.chroma import ChromaConfig
from llama_index_twostage.store.lexical import LexicalHits, LexicalIndex, LexicalRecord, TantivyIndex

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]


MARKER = ".twostage-lexical"
POINTER = "CURRENT"
MARK_FILE = "feed-mark"
GENERATION_PREFIX = "gen-"
SERVER_LEXICAL_ROOT = Path("./.twostage/lexical")  # a Chroma server's records, BM25-indexed on this host


class LexicalConfig(BaseModel):
    """How this host keeps the BM25 side of a Chroma store: how it reads text, where, and how stale it may be."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    language: LexicalLanguage = Field(
        "english",
        description="How BM25 reads text: a language's stemmer (and its stop words where tantivy has them), or 'cjk' "
        "(character bigrams for Chinese, Japanese and Korean). Recorded in the index: changing it needs "
        "`twostage reindex`.",
    )
    dir: Path | None = Field(
        None,
        description="Folder of the BM25 indexes (one per collection). Unset: persist_dir/twostage-lexical for an "
        "embedded store, ./.twostage/lexical/<host>-<port> for a server, in memory for the in-memory store; empty "
        "means unset. The folder must be new, empty or the library's own: one holding other files is refused.",
    )
    refresh_s: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="How stale a long-lived retriever's BM25 side may be: it reads Chroma's change feed at most this "
        "often before a query (0: before every query).",
    )

    @field_validator("dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """``TWOSTAGE_LEXICAL_DIR=`` means the default location, never the current folder."""
        return None if isinstance(value, str) and not value.strip() else value

    def path(self, collection: str, chroma: ChromaConfig) -> Path | None:
        """Where ``collection`` of that store keeps its BM25 index on this host: ``dir/<collection>``, by default
        beside an embedded store or, for a server, in a local folder per server; None (in memory) for the in-memory
        store. Nothing is created until the index is first written."""
        if self.dir is not None:
            root = self.dir
        elif chroma.mode == "memory":
            return None
        elif chroma.mode == "server":
            root = SERVER_LEXICAL_ROOT / f"{chroma.host}-{chroma.port}"
        else:
            root = chroma.persist_dir / "twostage-lexical"
        return root / collection

    def open_index(self, collection: str, chroma: ChromaConfig) -> LexicalIndex:
        """The BM25 index of ``collection`` on this host (in memory for the in-memory store), owned by the caller."""
        path = self.path(collection, chroma)
        analyser = Analyser(self.language)
        if path is None:
            return TantivyIndex(None, analyser)
        return LexicalFolder(path, root=self.dir, analyser=analyser)


def _write_atomically(path: Path, text: str) -> None:
    """Readers see the old content or the new one, never a partial file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _ours(folder: Path) -> bool:
    return (folder / MARKER).is_file()


class LexicalFolder(Closing):
    """A :class:`~llama_index_twostage.store.lexical.LexicalIndex` in a folder of generations, owned here.

    Args:
        path: the collection's folder (``<lexical_dir>/<collection>``).
        root: the folder the user chose for lexical indexes (``lexical_dir``); it may hold only the library's own
            folders. None when the location is the library's default.
        index_options: passed to each generation's :class:`TantivyIndex`.
    """

    def __init__(self, path: str | Path, *, root: str | Path | None = None, **index_options: Any) -> None:
        self.path = Path(path).expanduser()
        self.root = None if root is None else Path(root).expanduser()
        self._options = index_options
        self._lock = threading.Lock()
        self._live: tuple[str, TantivyIndex] | None = None
        self._empty: TantivyIndex | None = None  # in memory: what an index that was never written answers
        self._checked = False

    def describe(self) -> str:
        return f"the lexical index at {str(self.path)!r}"

    def __repr__(self) -> str:
        return f"LexicalFolder({self.describe()})"

    # Ownership: the library writes only into folders it created and marked.

    def _check_ownership(self) -> None:
        """Refuse a folder that holds files the library did not write (e.g. ``lexical_dir=.`` beside ``./docs``)."""
        if self._checked:
            return
        if self.path.exists() and not self.path.is_dir():
            raise LexicalIndexError(
                f"{self.describe()} cannot be opened: {str(self.path)!r} is a file, not a folder; move it away or set "
                "lexical_dir to another folder, then run `twostage reindex` to build the index from Chroma"
            )
        if self.path.is_dir() and not _ours(self.path) and any(self.path.iterdir()):
            raise LexicalIndexError(
                f"{self.describe()} holds files twostage did not create; it never writes into or deletes such a "
                "folder: set lexical_dir to a new or empty folder (then `twostage reindex`)"
            )
        if self.root is not None and self.root.is_dir():
            foreign = [entry.name for entry in self.root.iterdir() if not (entry.is_dir() and _ours(entry))]
            if foreign:
                shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
                raise LexicalIndexError(
                    f"lexical_dir {str(self.root)!r} holds files twostage did not create ({shown}): give lexical_dir "
                    "a folder of its own"
                )
        self._checked = True

    def _claim(self) -> None:
        """Create the folder (or adopt an empty one) and mark it as the library's."""
        self._check_ownership()
        self.path.mkdir(parents=True, exist_ok=True)
        if not _ours(self.path):
            (self.path / MARKER).write_text("a BM25 index of twostage, rebuilt from Chroma by `twostage reindex`\n")

    # Generations.

    def _pointed(self, *, vanished_ok: bool = False) -> str | None:
        """The live generation's name, or None when nothing was ever written; a folder removed under this process
        after it had used it is an error (never silently a new, empty index)."""
        try:
            name = (self.path / POINTER).read_text().strip()
        except FileNotFoundError:
            if self._live is not None and not vanished_ok:
                raise LexicalIndexError(
                    f"{self.describe()} is gone: its folder was removed while in use; run `twostage reindex` to "
                    "rebuild it from Chroma"
                ) from None
            return None
        if not name.startswith(GENERATION_PREFIX) or not (self.path / name).is_dir():
            raise LexicalIndexError(
                f"{self.describe()} points to a generation {name!r} that does not exist: rebuild it with "
                "`twostage reindex`"
            )
        return name

    def _generation(self, name: str) -> TantivyIndex:
        with self._lock:
            if self._live is None or self._live[0] != name:
                if self._live is not None:
                    self._live[1].close()
                self._live = (name, TantivyIndex(self.path / name, **self._options))
            return self._live[1]

    def _reading(self) -> TantivyIndex:
        """The live generation (reopened when a reindex swapped it), or an empty in-memory index."""
        self._check_ownership()
        name = self._pointed()
        if name is not None:
            return self._generation(name)
        if self._empty is None:
            self._empty = TantivyIndex(None, **self._options)
        return self._empty

    def _new_generation(self) -> str:
        name = f"{GENERATION_PREFIX}{uuid.uuid4().hex[:12]}"
        (self.path / name).mkdir()
        return name

    def _writing(self) -> TantivyIndex:
        """The live generation, created (with the folder) on the first write."""
        self._check_ownership()
        name = self._pointed()
        if name is None:
            self._claim()
            name = self._new_generation()
            proposed = self.path / f".{POINTER}.{name}"
            proposed.write_text(name)
            try:
                os.link(proposed, self.path / POINTER)  # the first generation: another process may race us
            except FileExistsError:
                shutil.rmtree(self.path / name)
                name = self._pointed() or name
            finally:
                proposed.unlink()
        return self._generation(name)

    def _swap(self, name: str) -> None:
        """Point to ``name``; remove generations older than the one it replaces (a reader may still use that one)."""
        previous = self._pointed(vanished_ok=True)
        _write_atomically(self.path / POINTER, name)
        keep = {name, previous}
        for entry in self.path.iterdir():
            if entry.is_dir() and entry.name.startswith(GENERATION_PREFIX) and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    @contextmanager
    def _rebuild_lock(self) -> Iterator[None]:
        """One reindex at a time per folder, across processes (a lock on the folder itself; none on Windows)."""
        if fcntl is None:
            yield
            return
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise LexicalIndexBusy(
                    f"{self.describe()} is being rebuilt by another process: wait for its `twostage reindex`"
                ) from None
            yield
        finally:
            os.close(descriptor)

    @contextmanager
    def rebuilding(self) -> Iterator[TantivyIndex]:
        """A new, empty generation to fill; it becomes the live one on a clean exit (readers switch on their next
        search), and is removed if filling it failed. Another process's reindex meanwhile is refused."""
        self._claim()
        with self._rebuild_lock():
            with self._filled_generation() as fresh:
                yield fresh

    @contextmanager
    def _filled_generation(self) -> Iterator[TantivyIndex]:
        name = self._new_generation()
        fresh = TantivyIndex(self.path / name, **self._options)
        try:
            yield fresh
        except BaseException:
            fresh.close()
            shutil.rmtree(self.path / name, ignore_errors=True)
            raise
        mark = fresh.feed_mark()
        fresh.close()
        if mark is not None:
            _write_atomically(self.path / name / MARK_FILE, repr(mark))
        self._swap(name)

    # The change feed's mark, kept with the generation it describes (a swap brings its own).

    def feed_mark(self) -> float | None:
        name = self._pointed()
        if name is None:
            return None
        try:
            return float((self.path / name / MARK_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def set_feed_mark(self, mark: float) -> None:
        name = self._pointed()
        if name is not None:
            _write_atomically(self.path / name / MARK_FILE, repr(mark))

    # The LexicalIndex interface.

    def add(self, records: Sequence[LexicalRecord]) -> None:
        if records:
            self._writing().add(records)

    def delete(self, ids: Sequence[str]) -> None:
        if ids and self._pointed() is not None:  # nothing to delete from an index never written
            self._writing().delete(ids)

    def count(self) -> int:
        return self._reading().count()

    def versions(self) -> dict[str, str]:
        return self._reading().versions()

    def search(self, query: str, limit: int) -> LexicalHits:
        return self._reading().search(query, limit)

    def close(self) -> None:
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            live[1].close()
        self._empty = None
