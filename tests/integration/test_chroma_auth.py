"""A Chroma server that checks a bearer token: a missing or wrong token is one clear error, never the token.

`chroma run` 1.5 accepts any token (its auth provider is a no-op), so the server here is a small loopback proxy in
front of it that enforces one, answering as Chroma's own auth does (HTTP 403, ``{"error": "AuthError"}``), with the
heartbeat protected or open.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from llama_index.core import Document
from typer.testing import CliRunner

from llama_index_twostage.cli import app
from llama_index_twostage.errors import ChromaAuthenticationError
from llama_index_twostage.pipeline import TwoStagePipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "tok-9c1f-only-the-proxy-knows"


class TokenProxy:
    """Forwards to a Chroma server the requests that carry ``Authorization: Bearer <token>``; refuses the rest."""

    def __init__(self, upstream: str, token: str, protect_heartbeat: bool) -> None:
        client = httpx.Client(base_url=upstream, timeout=30)
        self.authorizations_seen: set[str | None] = set()
        seen = self.authorizations_seen

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                seen.add(self.headers.get("Authorization"))
                allowed = self.headers.get("Authorization") == f"Bearer {token}"
                if not allowed and (protect_heartbeat or not self.path.endswith("/heartbeat")):
                    self._answer(403, json.dumps({"error": "AuthError", "message": "Forbidden"}).encode())
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {"Content-Type": self.headers.get("Content-Type") or "application/json"}
                response = client.request(self.command, self.path, content=body, headers=headers)
                self._answer(response.status_code, response.content)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self._client = client

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._client.close()


@pytest.fixture(params=[True, False], ids=["heartbeat-protected", "heartbeat-open"])
def proxy(request, chroma_server) -> Iterator[TokenProxy]:
    host, port = chroma_server
    token_proxy = TokenProxy(f"http://{host}:{port}", TOKEN, protect_heartbeat=request.param)
    yield token_proxy
    token_proxy.close()


@pytest.fixture
def behind_proxy(proxy, cheap_settings):
    """``behind_proxy(token)``: settings for the proxied server; a collection is already stored with the token."""
    address = {"chroma_host": "127.0.0.1", "chroma_port": proxy.port, "chroma_retries": 0, "chroma_timeout_s": 5}
    collection = f"auth-{proxy.port}"

    def make(token: str | None):
        return cheap_settings("server", collection, **address, **({"chroma_token": token} if token else {}))

    return make


@pytest.fixture
def stored(behind_proxy, hash_embedding):
    with TwoStagePipeline(behind_proxy(TOKEN), embed_model=hash_embedding) as pipeline:
        report = pipeline.ingest([Document(id_=f"d{i}", text=f"note number {i} on bees") for i in range(3)])
    assert report.stored_total == 3  # the right token works through the proxy


@pytest.mark.parametrize("token", [None, "tok-wrong-guess"], ids=["missing", "wrong"])
async def test_a_missing_or_wrong_token_is_one_clear_error(stored, behind_proxy, hash_embedding, token):
    settings = behind_proxy(token)
    with TwoStagePipeline(settings, embed_model=hash_embedding) as pipeline:
        failures = []
        for attempt in (
            lambda: pipeline.retriever().retrieve("bees"),
            lambda: pipeline.ingest([Document(id_="new", text="more on bees")]),
            pipeline.verify,
        ):
            with pytest.raises(ChromaAuthenticationError) as excinfo:
                attempt()
            failures.append(excinfo.value)
        with pytest.raises(ChromaAuthenticationError) as excinfo:
            await pipeline.retriever().aretrieve("bees")
        failures.append(excinfo.value)
    for failure in failures:
        message = str(failure)
        assert "authentication failed" in message and "set chroma_token" in message
        assert "unreachable" not in message
        assert TOKEN not in message and (token is None or token not in message)


async def test_two_stores_with_their_own_tokens_each_send_only_their_own(chroma_server, cheap_settings, hash_embedding):
    """Two Chroma servers (proxies), each with its token, queried from one event loop: each server sees only its
    own token (chromadb's async clients share one connection pool per event loop, headers included)."""
    host, port = chroma_server
    proxies = [TokenProxy(f"http://{host}:{port}", f"tok-tenant-{name}", protect_heartbeat=True) for name in "ab"]
    try:
        pipelines = []
        for name, proxy in zip("ab", proxies):
            address = {"chroma_host": "127.0.0.1", "chroma_port": proxy.port, "chroma_retries": 0}
            settings = cheap_settings(
                "server", f"tenant-{name}-{proxy.port}", chroma_token=f"tok-tenant-{name}", **address
            )
            pipelines.append(TwoStagePipeline(settings, embed_model=hash_embedding))
            pipelines[-1].ingest([Document(id_=f"{name}{i}", text=f"tenant {name} note {i} on bees") for i in range(3)])
        for name, pipeline in zip("ab", pipelines):
            results = await pipeline.retriever().aretrieve("bees")
            assert {result.node.ref_doc_id[0] for result in results} == {name}
            pipeline.close()
        assert [proxy.authorizations_seen for proxy in proxies] == [{"Bearer tok-tenant-a"}, {"Bearer tok-tenant-b"}]
    finally:
        for proxy in proxies:
            proxy.close()


@pytest.mark.parametrize("command", [["info"], ["query", "bees"], ["verify"]])
def test_cli_says_authentication_failed_in_one_line(stored, proxy, monkeypatch, command, embed_model_dir):
    monkeypatch.setenv("TWOSTAGE_CHROMA_TOKEN", "tok-wrong-guess")
    monkeypatch.setenv("TWOSTAGE_EMBED_MODEL", embed_model_dir)
    address = ["--chroma-host", "127.0.0.1", "--chroma-port", str(proxy.port), "--collection", f"auth-{proxy.port}"]
    result = CliRunner().invoke(app, [*command, *address], catch_exceptions=False)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: the Chroma server at 127.0.0.1:")
    assert "authentication failed" in lines[0] and "tok-wrong-guess" not in result.output
