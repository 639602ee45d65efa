"""A real ``chroma run`` on loopback, for tests, benchmarks and demos: started, crashed, hung and restarted.

Fault tests need to kill the server mid-request and bring it back on the same port and data directory (so that
clients built before the crash reconnect to it); this is the one place that knows how.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def chroma_executable() -> str:
    """The ``chroma`` CLI of this environment (beside the interpreter), else the one on PATH."""
    executable = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if executable is None:
        raise RuntimeError("the `chroma` CLI is not installed in this environment")
    return executable


class LocalChromaServer:
    """``chroma run --path PATH --host 127.0.0.1 --port PORT`` as a child process.

    ``kill`` is a crash (SIGKILL), ``pause``/``resume`` a hung server (SIGSTOP/SIGCONT), ``start`` after either
    brings the same store back on the same port.
    """

    def __init__(self, path: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.path, self.host = Path(path), host
        self.port = port or free_port(host)
        self.log_path = self.path.parent / f"chroma-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server and wait until its heartbeat answers; RuntimeError with its log tail if it does not."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        command = [chroma_executable(), "run", "--path", str(self.path), "--host", self.host, "--port", str(self.port)]
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"`chroma run` did not come up on {self.host}:{self.port}:\n{self.log_tail()}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_bytes()[-chars:].decode(errors="replace") if self.log_path.exists() else ""

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def pause(self) -> None:
        """Freeze the server: connections stay open and nothing answers (a hung server)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Crash the server (SIGKILL: no shutdown, no flush) and wait until it is gone."""
        self._end(graceful=False)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM, SIGKILL after 10 s)."""
        self._end(graceful=True)

    def _end(self, graceful: bool) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a stopped process ignores SIGTERM until continued
            process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalChromaServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
