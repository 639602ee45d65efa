"""Faults an operator meets, through the real ``twostage`` command: a Chroma server or proxy that echoes the token,
and full or vanished disks. Each ends in one line that names the fix, exit code 2, and never shows a secret."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document
from pydantic import SecretStr
from support import HASH_MODEL, HashEmbedding

from llama_index_twostage import (
    ChromaServerError,
    ChromaStore,
    ChromaUnavailableError,
    LexicalIndexError,
    TwoStagePipeline,
)
from llama_index_twostage.redaction import MIN_PIECE
from llama_index_twostage.retry import RetryPolicy

pytestmark = pytest.mark.integration

TOKEN = "tok-SECRET-0123456789abcdef"
TWOSTAGE = str(Path(sys.executable).with_name("twostage"))


def shows_the_token(text: str) -> bool:
    return any(TOKEN[start : start + MIN_PIECE] in text for start in range(len(TOKEN) - MIN_PIECE + 1))


class EchoingChroma:
    """Answers Chroma's heartbeat (unless ``heartbeat_too``), and every other request with ``status`` and a body and
    ``Location`` that echo the request's Authorization header, as a misconfigured proxy or server may."""

    def __init__(self, status: int, heartbeat_too: bool = False) -> None:
        echoing = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                echo = self.headers.get("authorization", "")
                if self.path.endswith("/heartbeat") and not heartbeat_too:
                    self.send(200, {"nanosecond heartbeat": 1})
                elif 300 <= status < 400:
                    self.send(status, f"<html>moved; you sent {echo}</html>", location=f"http://x/?{echo}")
                else:
                    self.send(status, {"error": "InternalError", "message": f"could not parse header {echo}"})

            def send(self, code: int, body: Any, location: str | None = None) -> None:
                payload = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                if location:
                    self.send_header("location", location)
                self.end_headers()
                self.wfile.write(payload)
                echoing.requests += 1

            do_GET = do_POST = do_PUT = answer

            def log_message(self, *args: Any) -> None:
                pass

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=[400, 500, 302])
def echoing_chroma(request: pytest.FixtureRequest) -> Iterator[EchoingChroma]:
    server = EchoingChroma(request.param)
    yield server
    server.close()


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWOSTAGE, *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *, verbose: bool) -> str:
    """The command failed with exit code 2 and one ``error:`` line (its last), showing no secret anywhere."""
    assert result.returncode == 2, result.stderr
    assert not shows_the_token(result.stdout + result.stderr), result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    if not verbose:
        assert len(lines) == 1, result.stderr
    return lines[-1]


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
@pytest.mark.parametrize("command", [["info"], ["query", "what erupts?"], ["verify"]])
def test_a_chroma_server_that_echoes_the_token_gets_one_masked_line(echoing_chroma, tmp_path, command, verbose):
    env = {
        "TWOSTAGE_CHROMA_HOST": "127.0.0.1",
        "TWOSTAGE_CHROMA_PORT": str(echoing_chroma.port),
        "TWOSTAGE_CHROMA_TOKEN": TOKEN,
        "TWOSTAGE_CHROMA_RETRIES": "0",
    }
    result = run_cli(*(["-v"] if verbose else []), *command, env=env, cwd=tmp_path)
    line = assert_one_line_error(result, verbose=verbose)
    assert f"Chroma server at 127.0.0.1:{echoing_chroma.port}" in line and "**********" in line
    assert echoing_chroma.requests >= 2  # the heartbeat, then the answer that echoed the token


def test_a_heartbeat_redirect_that_echoes_the_token_is_masked_too(tmp_path):
    server = EchoingChroma(302, heartbeat_too=True)
    try:
        env = {"TWOSTAGE_CHROMA_HOST": "127.0.0.1", "TWOSTAGE_CHROMA_PORT": str(server.port)}
        result = run_cli("info", env={**env, "TWOSTAGE_CHROMA_TOKEN": TOKEN}, cwd=tmp_path)
    finally:
        server.close()
    assert "answered an error (HTTPStatusError: Redirect response '302 Found'" in assert_one_line_error(
        result, verbose=False
    )


@pytest.mark.parametrize("status", [400, 500, 302, 307])
def test_the_library_logs_no_token_at_debug(caplog, status):
    caplog.set_level(logging.DEBUG)
    server = EchoingChroma(status)
    store = ChromaStore(
        "docs", mode="server", host="127.0.0.1", port=server.port, token=SecretStr(TOKEN), retry=RetryPolicy(retries=0)
    )
    try:
        with pytest.raises(ChromaServerError, match=r"answered an error .*\*{10}") as raised:
            store.with_retries(store.open_collection)
    finally:
        store.close()
        server.close()
    assert not shows_the_token(str(raised.value)) and not shows_the_token(caplog.text)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no traceback quotes the answer


def test_after_close_the_http_loggers_are_left_as_they_were():
    http11 = logging.getLogger("httpcore.http11")
    before = list(http11.filters)
    store = ChromaStore(
        "docs",
        mode="server",
        host="127.0.0.1",
        port=9,
        token=SecretStr(TOKEN),
        retry=RetryPolicy(retries=0),
        timeout_s=0.5,
    )
    with pytest.raises(ChromaUnavailableError):
        store.with_retries(store.open_collection)
    assert len(http11.filters) == len(before) + 1
    store.close()
    assert http11.filters == before


# Full disks: one error that says to free space, and the same command, run again, converges.


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_disk(size)``: a tmpfs of that size (e.g. '1m'), grown to 256 MB by calling it again ("space freed")."""
    mount = tmp_path / "small-disk"
    mount.mkdir()

    def sized(size: str) -> Path:
        options = f"size={size}" if not os.path.ismount(mount) else f"remount,size={size}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
        if done.returncode:
            pytest.skip(f"a real full disk needs a tmpfs mount (root): {done.stderr.decode().strip()}")
        return mount

    yield sized
    if os.path.ismount(mount):
        subprocess.run(["umount", "-l", str(mount)], check=True)


DOCUMENTS = [Document(text=f"note {i}: " + "lorem ipsum dolor sit amet " * 40, doc_id=f"note-{i}") for i in range(400)]


@pytest.mark.parametrize("full", ["chroma", "lexical"])
def test_a_full_disk_during_ingest_says_free_space_and_a_rerun_converges(cheap_settings, small_disk, tmp_path, full):
    disk = small_disk("1m" if full == "chroma" else "100k")
    roomy = tmp_path / "roomy"
    settings = cheap_settings(
        "embedded",
        persist_dir=(disk if full == "chroma" else roomy) / "chroma",
        lexical_dir=(disk if full == "lexical" else roomy) / "lexical",
    )
    error = ChromaUnavailableError if full == "chroma" else LexicalIndexError
    with TwoStagePipeline(settings, embed_model=HashEmbedding()) as pipeline:
        with pytest.raises(
            error, match=r"(database or disk is full|the disk is full).*free space and run the same command"
        ):
            pipeline.ingest(DOCUMENTS)
    small_disk("256m")  # space freed
    with TwoStagePipeline(settings, embed_model=HashEmbedding()) as pipeline:
        report = pipeline.ingest(DOCUMENTS)
        assert report.stored_total == len(DOCUMENTS)
        assert pipeline.lexical.count() == len(DOCUMENTS)
        assert pipeline.verify().ok


def test_reindex_refuses_a_file_where_the_index_should_be_and_leaves_it(cheap_settings, tmp_path):
    settings = cheap_settings(
        "embedded", collection="notes", persist_dir=tmp_path / "chroma", lexical_dir=tmp_path / "lexical"
    )
    with TwoStagePipeline(settings, embed_model=HashEmbedding()) as pipeline:
        pipeline.ingest(DOCUMENTS[:3])
    shutil.rmtree(tmp_path / "lexical")
    (tmp_path / "lexical").mkdir()
    (tmp_path / "lexical" / "notes").write_text("the user's notes")
    env = {
        "TWOSTAGE_PERSIST_DIR": str(settings.persist_dir),
        "TWOSTAGE_COLLECTION": "notes",
        "TWOSTAGE_LEXICAL_DIR": str(tmp_path / "lexical"),
        "TWOSTAGE_EMBED_MODEL": HASH_MODEL,
    }
    for command in (["reindex"], ["verify"]):
        line = assert_one_line_error(run_cli(*command, env=env, cwd=tmp_path), verbose=False)
        assert "is a file, not a folder; move it away or set lexical_dir" in line
    assert (tmp_path / "lexical" / "notes").read_text() == "the user's notes"
