"""One process per embedded Chroma store: Chroma keeps an embedded store's data cached per process, so a second
process would read and write its own, diverging copy (deleted chunks returned without text, new ones never seen).

A store opened in embedded mode holds an exclusive ``flock`` on its folder for as long as any client of this process
has it open; another process that tries is refused with one line that says to serve the store with ``chroma run``.
The lock is taken on the folder itself (no file is created) and is released by the operating system when the
process ends, however it ends.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import ClassVar

from llama_index_twostage.errors import EmbeddedStoreInUseError

try:
    import fcntl
except ImportError:  # Windows: no flock; the check is skipped
    fcntl = None  # type: ignore[assignment]


class EmbeddedStoreLock:
    """This process's hold on embedded store folders, counted per folder (several stores in one process share a
    folder, as they share Chroma's cached client)."""

    _held: ClassVar[dict[str, list[int]]] = {}  # folder -> [file descriptor, holders]
    _guard: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def acquire(cls, folder: Path) -> None:
        if fcntl is None:
            return
        key = str(folder.resolve())
        with cls._guard:
            if key in cls._held:
                cls._held[key][1] += 1
                return
            descriptor = os.open(key, os.O_RDONLY)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(descriptor)
                raise EmbeddedStoreInUseError(
                    f"the embedded Chroma store at {key!r} is open in another process, and embedded Chroma caches "
                    "its data per process (each would see its own copy): serve it with "
                    f"`chroma run --path {key} --host 127.0.0.1 --port 8000` and set chroma_host/chroma_port"
                ) from None
            cls._held[key] = [descriptor, 1]

    @classmethod
    def release(cls, folder: Path) -> None:
        if fcntl is None:
            return
        key = str(folder.resolve())
        with cls._guard:
            held = cls._held.get(key)
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0:
                del cls._held[key]
                os.close(held[0])  # closing the folder's descriptor releases the lock
