"""A real ``chroma run`` on loopback, for tests, benchmarks and demos (see :class:`LocalServer` for crashes, hangs
and restarts on the same port and data directory)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from llama_index_twostage.testing.local_server import LocalServer


def chroma_executable() -> str:
    """The ``chroma`` CLI of this environment (beside the interpreter), else the one on PATH."""
    executable = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if executable is None:
        raise RuntimeError("the `chroma` CLI is not installed in this environment")
    return executable


class LocalChromaServer(LocalServer):
    """``chroma run --path PATH --host 127.0.0.1 --port PORT`` as a child process; ``start`` after a ``kill`` brings
    the same store back on the same port."""

    name = "`chroma run`"
    log_prefix = "chroma"

    def __init__(self, path: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.path = Path(path)
        super().__init__(self.path.parent, port, host)

    def command(self) -> list[str]:
        self.path.mkdir(parents=True, exist_ok=True)
        return [chroma_executable(), "run", "--path", str(self.path), "--host", self.host, "--port", str(self.port)]

    def health_url(self) -> str:
        return f"{self.url}/api/v2/heartbeat"
