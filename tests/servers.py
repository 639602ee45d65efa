"""Real servers on loopback for the tests and benchmarks: a ``chroma run`` and an Infinity rerank server, started,
crashed, hung and restarted on the same port.

Test support, not library: it uses POSIX process groups and signals (SIGSTOP for a hung server) and the checkout's
``.venv-infinity``, so it lives beside the tests, not in the wheel. Benchmarks import it by putting the repository
root on ``sys.path`` (``from tests.servers import ...``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

OFFLINE = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """A child process in its own process group (signals reach every process it started), logging to
    ``log_dir/<log_prefix>-<port>.log``.

    Fault tests need to kill a server mid-request and bring it back on the same port (so that clients built before
    the crash reconnect to it): ``kill`` is a crash (SIGKILL), ``pause``/``resume`` a hung server (SIGSTOP/SIGCONT),
    ``start`` after either brings it back on the same port. Subclasses say what to run and where it answers.
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

    def clients(self) -> set[tuple[str, int]]:
        """The addresses of the clients connected to the server now (loopback: visible from this machine)."""
        import psutil

        return {
            (connection.raddr.ip, connection.raddr.port)
            for connection in psutil.net_connections("tcp")
            if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == self.port and connection.raddr
        }

    def wait_for_a_new_client(self, known: set[tuple[str, int]], timeout_s: float = 60.0) -> None:
        """Until a client not in ``known`` has connected (a request is on its way); AssertionError after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.clients() - known:
            assert time.monotonic() < deadline, f"no new client connected to {self.name} within {timeout_s:g}s"
            time.sleep(0.01)

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


def chroma_executable() -> str:
    """The ``chroma`` CLI of this environment (beside the interpreter), else the one on PATH."""
    executable = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if executable is None:
        raise RuntimeError("the `chroma` CLI is not installed in this environment")
    return executable


class LocalChromaServer(LocalServer):
    """``chroma run --path PATH --host 127.0.0.1 --port PORT``; ``start`` after a ``kill`` brings the same store back
    on the same port."""

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


class LocalInfinityServer(LocalServer):
    """``infinity_emb v2 --model-id MODEL_DIR --served-model-name NAME --engine torch --device cpu`` on loopback,
    serving a local cross-encoder directory offline.

    Infinity pins sentence-transformers < 4, so it lives in its own virtualenv (``scripts/setup_infinity.sh``
    creates ``.venv-infinity``).

    Args:
        executable: the ``infinity_emb`` of its virtualenv.
        model_dir: a local sentence-transformers cross-encoder directory.
        log_dir: where the server's output goes (``infinity-<port>.log``).
        served_model_name: the ``model`` a request names.
        api_key: when set, the server refuses requests without this bearer token.
        warmup: Infinity's model warm-up (about 20 s on 2 cores); off, the first requests pay it.
    """

    name = "infinity_emb"
    log_prefix = "infinity"

    def __init__(
        self,
        executable: Path,
        model_dir: Path,
        log_dir: Path,
        *,
        served_model_name: str = "reranker",
        api_key: str | None = None,
        warmup: bool = False,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(log_dir, port, host)
        self.executable, self.model_dir = Path(executable).absolute(), Path(model_dir).absolute()
        self.served_model_name, self.api_key, self.warmup = served_model_name, api_key, warmup

    @property
    def rerank_url(self) -> str:
        return f"{self.url}/rerank"

    def command(self) -> list[str]:
        if not self.executable.is_file():
            raise RuntimeError(f"{self.executable} is missing: `bash scripts/setup_infinity.sh` creates .venv-infinity")
        command = [str(self.executable), "v2", "--model-id", str(self.model_dir)]
        command += ["--served-model-name", self.served_model_name, "--engine", "torch", "--device", "cpu"]
        command += ["--no-trust-remote-code", "--host", self.host, "--port", str(self.port)]
        command += ["--model-warmup" if self.warmup else "--no-model-warmup"]
        return command + (["--api-key", self.api_key] if self.api_key else [])

    def health_url(self) -> str:
        return f"{self.url}/health"

    def environment(self) -> Mapping[str, str]:
        return OFFLINE

    def working_dir(self) -> Path | None:
        return self.log_path.parent  # Infinity writes its .infinity_cache there
