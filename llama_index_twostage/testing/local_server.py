"""A server as a child process on loopback, for tests, benchmarks and demos: started, crashed, hung and restarted.

Fault tests need to kill a server mid-request and bring it back on the same port (so that clients built before the
crash reconnect to it); this is the one place that knows how. Subclasses say what to run and where it answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """A child process in its own process group (signals reach every process it started), logging to
    ``log_dir/<log_prefix>-<port>.log``.

    ``kill`` is a crash (SIGKILL), ``pause``/``resume`` a hung server (SIGSTOP/SIGCONT), ``start`` after either
    brings it back on the same port.
    """

    name = "server"
    log_prefix = "server"

    def __init__(self, log_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_dir) / f"{self.log_prefix}-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """What to run (subclasses)."""
        raise NotImplementedError

    def health_url(self) -> str:
        """What answers 200 once the server serves (subclasses)."""
        raise NotImplementedError

    def environment(self) -> Mapping[str, str]:
        """Variables added to this process's environment for the server."""
        return {}

    def working_dir(self) -> Path | None:
        """Where the server runs (None: here); a server that writes caches into it gets its own."""
        return None

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server and wait until it answers; RuntimeError with its log tail if it does not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.environment()},
            cwd=self.working_dir(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not come up on {self.host}:{self.port}:\n{self.log_tail()}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            return httpx.get(self.health_url(), timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_bytes()[-chars:].decode(errors="replace") if self.log_path.exists() else ""

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signum)

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
        process = self._process
        if process is not None and process.poll() is None:
            self._signal(signal.SIGCONT)  # a stopped process ignores SIGTERM until continued
            self._signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                process.wait(timeout=10)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
