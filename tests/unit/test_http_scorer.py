"""The HTTP scorer against a stub ``/rerank`` server on loopback (for the wire format only; the real server is
Infinity, in tests/integration/test_rerank_server.py): both schemas, splitting, retries, and every malformed answer
as a clear error that names the URL and never the key."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import SecretStr
from servers import free_port

from llama_index_twostage import (
    RerankAuthenticationError,
    RerankServerError,
    RetrieverSettings,
    TwoStagePipeline,
    build_reranker,
)
from llama_index_twostage.models import ModelPool
from llama_index_twostage.retry import RetryPolicy
from llama_index_twostage.stage2 import CrossEncoderRerank, HttpRerankScorer, ScoreCache
from llama_index_twostage.stage2.http import retry_after_s

KEY = "sk-stub-0123456789"
TEXTS = ["a", "bbbb", "cc", "dddddd", "eee"]


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes or str; in a str and in headers, {authorization} echoes the header
    headers: dict[str, str] = field(default_factory=dict)
    chunks: Iterable[bytes] | None = None  # sent one by one instead of body (give content-length in headers)
    pause_s: float = 0.0  # between chunks


def sorted_results(body: dict[str, Any]) -> Any:
    """A correct answer: each document scored by its length, best first (as servers sort them)."""
    texts = body.get("texts") or body["documents"]
    order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
    if "texts" in body:
        return [{"index": index, "score": float(len(texts[index]))} for index in order]
    results = [{"index": i, "relevance_score": len(texts[i]) / 10, "document": {"text": texts[i]}} for i in order]
    return {"results": results, "meta": {"billed_units": {"search_units": 1}}, "usage": {"total_tokens": 9}}


class StubServer:
    """A ``/rerank`` endpoint that answers the next scripted reply (else a correct one) and records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.sent: list[int] = []  # bytes of each chunked body that reached the socket before the client left
        self.script: list[Callable[[dict[str, Any]], Reply]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with stub._lock:
                    stub.requests.append((dict(self.headers), body))
                    answer = stub.script.pop(0) if stub.script else (lambda b: Reply(body=sorted_results(b)))
                reply = answer(body)
                echo = self.headers.get("authorization", "")
                headers = {"content-type": "application/json", **reply.headers}
                self.send_response(reply.status)
                for name, value in headers.items():
                    self.send_header(name, value.replace("{authorization}", echo))
                if reply.chunks is not None:
                    self.end_headers()
                    self.send_chunks(reply)
                    return
                payload = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else reply.body.replace("{authorization}", echo).encode()
                    if isinstance(reply.body, str)
                    else json.dumps(reply.body).encode()
                )
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def send_chunks(self, reply: Reply) -> None:
                sent = 0
                try:
                    for chunk in reply.chunks or ():
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        sent += len(chunk)
                        time.sleep(reply.pause_s)
                except OSError:  # the client stopped reading and closed the connection
                    pass
                stub.sent.append(sent)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rerank"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def reply(self, *replies: Reply) -> None:
        self.script.extend(lambda body, reply=reply: reply for reply in replies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


@pytest.fixture
def scorer_for(stub: StubServer) -> Iterator[Callable[..., HttpRerankScorer]]:
    made: list[HttpRerankScorer] = []

    def make(**options: Any) -> HttpRerankScorer:
        options = {"model": "reranker", "api_key": SecretStr(KEY), **options}
        retry = RetryPolicy(retries=options.pop("retries", 2), backoff_s=options.pop("retry_backoff_s", 0.0))
        made.append(HttpRerankScorer(options.pop("url", stub.url), retry=retry, **options))
        return made[-1]

    yield make
    for scorer in made:
        scorer.close()


def run_both(scorer: HttpRerankScorer, texts: list[str]) -> list[list[float]]:
    """The same texts scored through the sync client and the async one."""
    return [scorer.score("q", texts), asyncio.run(scorer.ascore("q", texts))]


def test_cohere_schema_sends_the_documents_and_matches_results_by_index(stub, scorer_for):
    scorer = scorer_for(api="cohere")
    assert run_both(scorer, TEXTS) == [[len(text) / 10 for text in TEXTS]] * 2
    headers, body = stub.requests[0]
    assert body == {"model": "reranker", "query": "q", "documents": TEXTS, "top_n": 5, "return_documents": False}
    assert headers["Authorization"] == f"Bearer {KEY}"


def test_cohere_documents_as_strings_and_extra_fields_are_read(stub, scorer_for):
    results = [{"index": 1, "relevance_score": 0.9, "document": "bbbb"}, {"index": 0, "relevance_score": 0.1}]
    stub.reply(Reply(body={"id": "x", "results": results, "meta": {"api_version": {"version": "2"}}}))
    assert scorer_for().score("q", ["a", "bbbb"]) == [0.1, 0.9]


@pytest.mark.parametrize("normalize", [False, True])
def test_tei_schema_asks_for_logits_or_sigmoid_scores(stub, scorer_for, normalize):
    scorer = scorer_for(api="tei", normalize=normalize)
    assert run_both(scorer, TEXTS) == [[float(len(text)) for text in TEXTS]] * 2
    assert stub.requests[0][1] == {"query": "q", "texts": TEXTS, "raw_scores": not normalize, "truncate": True}


@pytest.mark.parametrize("api", ["cohere", "tei"])
def test_long_lists_are_split_into_requests_and_merged_in_order(stub, scorer_for, api):
    texts = [f"{'x' * (index % 4)}{index}" for index in range(8)]
    expected = [len(text) / 10 if api == "cohere" else float(len(text)) for text in texts]
    assert run_both(scorer_for(api=api, max_documents=3), texts) == [expected, expected]
    sent = [body.get("texts") or body.get("documents") for _, body in stub.requests]
    assert sorted(map(tuple, sent[:3])) == sorted(map(tuple, sent[3:]))  # the same three requests, sync and async
    assert sorted(map(tuple, sent[:3])) == sorted(tuple(texts[start : start + 3]) for start in range(0, 8, 3))


def test_no_texts_send_no_request(stub, scorer_for):
    assert run_both(scorer_for(), []) == [[], []]
    assert stub.requests == []


MALFORMED = {
    "invalid JSON": Reply(body=b"<html>gateway</html>"),
    "fewer results": Reply(body={"results": [{"index": 0, "relevance_score": 0.5}]}),
    "more results": Reply(body={"results": [{"index": i, "relevance_score": 0.5} for i in (0, 1, 1)]}),
    "repeated index": Reply(body={"results": [{"index": 0, "relevance_score": 0.5}] * 2}),
    "index out of range": Reply(body={"results": [{"index": i, "relevance_score": 0.5} for i in (0, 2)]}),
    "index not a number": Reply(body={"results": [{"index": i, "relevance_score": 0.5} for i in ("0", 1)]}),
    "missing index": Reply(body={"results": [{"relevance_score": 0.5}, {"index": 1, "relevance_score": 0.5}]}),
    "non-numeric score": Reply(body={"results": [{"index": i, "relevance_score": "high"} for i in (0, 1)]}),
    "NaN score": Reply(body=b'{"results": [{"index": 0, "relevance_score": NaN}, {"index": 1, "relevance_score": 1}]}'),
    "no results key": Reply(body={"data": []}),
    "a bare list to cohere": Reply(body=[{"index": 0, "score": 1.0}, {"index": 1, "score": 2.0}]),
    "HTTP 400": Reply(400, {"detail": "model 'reranker' not found"}),
    "HTTP 413": Reply(413, {"error": "batch size 2 > maximum allowed batch size 1"}),
    "HTTP 500": Reply(500, b"Internal Server Error"),
}


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("path", ["sync", "async"])
def test_every_malformed_answer_is_an_error_naming_the_url_and_status(stub, scorer_for, answer, path):
    stub.reply(answer)
    scorer = scorer_for()
    with pytest.raises(RerankServerError) as raised:
        scorer.score("q", ["a", "bb"]) if path == "sync" else asyncio.run(scorer.ascore("q", ["a", "bb"]))
    message = str(raised.value)
    assert stub.url in message and f"HTTP {answer.status}" in message and KEY not in message
    assert len(stub.requests) == 1  # a wrong answer is not retried: the same request gets the same answer


def test_tei_answers_are_checked_too(stub, scorer_for):
    stub.reply(Reply(body={"results": []}), Reply(body=[{"index": 0, "score": 1.0}]))
    for _ in range(2):
        with pytest.raises(RerankServerError, match="list of|1 results for 2 documents"):
            scorer_for(api="tei").score("q", ["a", "bb"])


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_overload_are_retried_honouring_retry_after(stub, scorer_for, caplog, status):
    stub.reply(Reply(status, {"error": "slow down"}, {"Retry-After": "0"}))
    scorer = scorer_for(retries=2, retry_backoff_s=30.0)  # Retry-After wins over the backoff
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage.stage2.http"):
        assert scorer.score("q", ["a", "bb"]) == [0.1, 0.2]
    assert len(stub.requests) == 2 and "retrying in 0.00s" in caplog.text and KEY not in caplog.text


def test_retries_end_in_an_error_that_says_how_often_it_tried(stub, scorer_for):
    stub.reply(*[Reply(503, {"error": "loading"}, {"Retry-After": "0"})] * 3)
    with pytest.raises(RerankServerError, match=r"failed after 3 attempts: HTTP 503"):
        asyncio.run(scorer_for(retries=2).ascore("q", ["a"]))


def test_retry_after_reads_seconds_and_http_dates():
    def response(**headers: str) -> httpx.Response:
        return httpx.Response(429, headers=headers)

    assert retry_after_s(response(**{"retry-after": "1.5"})) == 1.5
    dated = {"retry-after": "Wed, 21 Oct 2026 07:28:02 GMT", "date": "Wed, 21 Oct 2026 07:28:00 GMT"}
    assert retry_after_s(response(**dated)) == 2.0
    assert retry_after_s(response()) is None and retry_after_s(response(**{"retry-after": "soon"})) is None


@pytest.mark.parametrize("path", ["sync", "async"])
def test_an_unreachable_server_is_retried_then_named(scorer_for, path):
    url = f"http://127.0.0.1:{free_port()}/rerank"  # nothing listens there
    scorer = scorer_for(url=url, retries=1, timeout_s=2.0)
    with pytest.raises(RerankServerError, match=r"did not answer after 2 attempts \(ConnectError") as raised:
        scorer.score("q", ["a"]) if path == "sync" else asyncio.run(scorer.ascore("q", ["a"]))
    assert url in str(raised.value)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_not_retried_and_never_shown(stub, scorer_for, status):
    stub.script.append(lambda body: Reply(status, {"detail": f"bad key {stub.requests[-1][0]['Authorization']}"}))
    with pytest.raises(RerankAuthenticationError, match=f"refused the credentials \\(HTTP {status}\\)") as raised:
        scorer_for().score("q", ["a"])
    assert KEY not in str(raised.value) and KEY not in repr(raised.value) and len(stub.requests) == 1


def test_normalize_refuses_logits_from_a_cohere_style_server(stub, scorer_for):
    stub.reply(Reply(body={"results": [{"index": 0, "relevance_score": 3.2}, {"index": 1, "relevance_score": 0.4}]}))
    with pytest.raises(RerankServerError, match="outside 0-1 .*3.2.*unset normalize_scores"):
        scorer_for(normalize=True).score("q", ["a", "b"])


def test_the_key_stays_out_of_reprs_settings_and_cache_keys(scorer_for):
    scorer = scorer_for()
    settings = RetrieverSettings(rerank_backend="http", rerank_url=scorer.url, rerank_api_key=KEY)
    shown = [repr(scorer), str(scorer.cache_key), repr(settings), str(settings.to_dict()), settings.model_dump_json()]
    assert all(KEY not in text for text in shown)
    assert RetrieverSettings.from_dict(settings.to_dict()).rerank_api_key is None  # a masked key is never taken
    with pytest.raises(ValueError) as raised:
        RetrieverSettings(rerank_backend="http", rerank_url="ftp://x", rerank_api_key=KEY)
    assert KEY not in str(raised.value) and "rerank_url" in str(raised.value)


def test_settings_need_a_url_and_a_local_cascade():
    with pytest.raises(ValueError, match="needs rerank_url"):
        RetrieverSettings(rerank_backend="http")
    with pytest.raises(ValueError, match="set cascade_backend"):
        RetrieverSettings(rerank_backend="http", rerank_url="http://h/rerank", cascade_k=10, recall_k=20)


def test_cache_keys_name_the_server_model_schema_and_activation(scorer_for):
    base = scorer_for()
    variants = [scorer_for(url=base.url + "2"), scorer_for(model="other"), scorer_for(api="tei")]
    variants.append(scorer_for(normalize=True))
    assert len({base.cache_key, *(variant.cache_key for variant in variants)}) == 5
    assert scorer_for(max_documents=2, timeout_s=1.0).cache_key == base.cache_key


def nodes(texts: list[str]) -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=f"n{i}", text=text), score=0.5) for i, text in enumerate(texts)]


async def test_the_reranker_keeps_its_cache_and_metadata_on_a_server(stub, scorer_for):
    reranker = CrossEncoderRerank(scorer_for(), top_k=2, score_cache=ScoreCache(100))
    first = await reranker.apostprocess_nodes(nodes(TEXTS), query_str="q")
    again = reranker.postprocess_nodes(nodes(TEXTS), query_str="q")
    assert [r.node.node_id for r in first] == [r.node.node_id for r in again] == ["n3", "n1"]
    info = again[0].metadata["twostage"]
    assert info["rerank_backend"] == "http" and info["pairs_cached"] == 5 and "pairs_truncated" not in info
    assert len(stub.requests) == 1


def test_settings_build_one_scorer_per_pool_and_the_pool_closes_it(stub):
    settings = RetrieverSettings(
        rerank_backend="http", rerank_url=stub.url, rerank_model="reranker", rerank_api_key=KEY, chroma_mode="memory"
    )
    pool = ModelPool()
    scorers = [TwoStagePipeline(settings, models=pool).reranker().scorer for _ in range(2)]
    assert scorers[0] is scorers[1] and scorers[0].score("q", ["a"]) == [0.1]
    other_key = settings.replace(rerank_api_key=SecretStr("another"))
    assert TwoStagePipeline(other_key, models=pool).reranker().scorer is not scorers[0]
    pool.close()
    with pytest.raises(ValueError, match="is closed"):
        scorers[0].score("q", ["a"])


def test_a_reranker_built_alone_keeps_its_http_clients_and_closes_them(stub):
    settings = RetrieverSettings(
        rerank_backend="http", rerank_url=stub.url, rerank_model="reranker", chroma_mode="memory"
    )
    with build_reranker(settings) as reranker:
        scorer = reranker.scorer
        assert scorer.score("q", ["a"]) == [0.1]
    with pytest.raises(ValueError, match="is closed"):
        scorer.score("q", ["a"])


# Secrets: a server that echoes the Authorization header never gets the key into a log line or an error.


def shows_the_key(text: str) -> bool:
    """Whether ``text`` holds any piece of six or more characters of the key."""
    return any(KEY[start : start + 6] in text for start in range(len(KEY) - 5))


@pytest.mark.parametrize("status", [503, 429, 400, 404, 500, 302, 301, 307, 401, 403])
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_key_echoed_by_the_server_reaches_no_log_line_and_no_error(stub, scorer_for, caplog, status, path):
    caplog.set_level(logging.DEBUG)  # every logger, httpx's and httpcore's included, at every level
    echo = Reply(status, "overloaded; your header was {authorization}", {"location": "http://x/?auth={authorization}"})
    stub.reply(echo, echo)
    scorer = scorer_for(retries=1)
    with pytest.raises(RerankServerError) as raised:
        scorer.score("q", TEXTS) if path == "sync" else asyncio.run(scorer.ascore("q", TEXTS))
    assert stub.requests[0][0]["Authorization"] == f"Bearer {KEY}"  # the key was sent, and echoed
    assert not shows_the_key(str(raised.value)) and not shows_the_key(caplog.text)
    if status not in (401, 403):  # the message quotes the body (refused credentials quote nothing)
        assert "**********" in str(raised.value)
    if status in (503, 429):  # the retry's warning quoted the echoing body
        assert "retrying" in caplog.text and "your header was Bearer **********" in caplog.text


def test_a_key_cut_by_the_excerpt_is_masked_in_every_piece(stub, scorer_for):
    for padding in range(280, 300):  # the 300-character excerpt ends inside "Bearer <key>"
        stub.reply(Reply(500, "x" * padding + " {authorization} tail"))
        with pytest.raises(RerankServerError) as raised:
            scorer_for(retries=0).score("q", TEXTS)
        assert not shows_the_key(str(raised.value)), padding


# Bounds: every call ends within its deadline, reads a bounded answer, and never follows a redirect.


def trickle(seconds: float) -> Reply:
    """A correct-looking answer sent one byte every ``pause_s`` (a stuck proxy, a slowloris)."""
    return Reply(
        200, headers={"content-length": "100000"}, chunks=(b" " for _ in range(int(seconds / 0.5))), pause_s=0.5
    )


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_trickling_server_cannot_hold_a_call_past_its_deadline(stub, scorer_for, path):
    stub.reply(trickle(20), trickle(20))
    scorer = scorer_for(timeout_s=1.0, retries=1)
    started = time.monotonic()
    with pytest.raises(RerankServerError, match=r"within the call's deadline of 2s") as raised:
        scorer.score("q", TEXTS) if path == "sync" else asyncio.run(scorer.ascore("q", TEXTS))
    assert time.monotonic() - started < 4  # the deadline (2s) plus at most one byte's pause; was 20s
    assert "after 2 attempts" in str(raised.value) and "ReadTimeout" in str(raised.value)


def test_a_retry_that_would_outlast_the_deadline_is_not_waited_for(stub, scorer_for):
    stub.reply(trickle(20), trickle(20), trickle(20))  # each attempt takes its whole 1s
    scorer = scorer_for(timeout_s=1.0, retries=3, retry_backoff_s=1.0)  # waits 1s, then 2s: past the 4s deadline
    with pytest.raises(RerankServerError, match="after 2 attempts and no time was left to retry within the call's"):
        scorer.score("q", TEXTS)
    assert len(stub.requests) == 2


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_compressed_answer_is_capped_after_decompression(stub, scorer_for, path):
    bomb = gzip.compress(b" " * 100_000_000, compresslevel=9)  # 97 KB that inflate to 100 MB of valid JSON space
    stub.reply(Reply(200, bomb, {"content-encoding": "gzip"}))
    scorer = scorer_for(max_response_bytes=1_000_000)
    with pytest.raises(RerankServerError, match=r"more than rerank_max_response_bytes \(1,000,000 bytes after decomp"):
        scorer.score("q", TEXTS) if path == "sync" else asyncio.run(scorer.ascore("q", TEXTS))


def test_an_endless_error_body_is_read_only_as_far_as_the_message_quotes(stub, scorer_for):
    endless = (b"e" * 1_000_000 for _ in range(200))  # 200 MB, if anyone read it
    stub.reply(Reply(500, headers={"content-length": str(200_000_000)}, chunks=endless))
    with pytest.raises(RerankServerError, match=r"HTTP 500 Internal Server Error: e{300}$"):
        scorer_for(retries=0).score("q", TEXTS)
    deadline = time.monotonic() + 5
    while not stub.sent and time.monotonic() < deadline:  # the server notices the closed connection
        time.sleep(0.05)
    assert stub.sent and stub.sent[0] < 50_000_000  # socket buffers, not the body


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_redirect_is_an_error_naming_its_location_even_with_valid_scores(stub, scorer_for, path):
    scores = {"results": [{"index": i, "relevance_score": 0.5} for i in range(len(TEXTS))]}
    stub.reply(Reply(302, scores, {"location": "http://elsewhere.example/rerank"}))
    scorer = scorer_for()
    with pytest.raises(RerankServerError, match=r"HTTP 302 redirecting to http://elsewhere.example/rerank.*rerank_url"):
        scorer.score("q", TEXTS) if path == "sync" else asyncio.run(scorer.ascore("q", TEXTS))
    assert len(stub.requests) == 1  # not followed


# Faults: answers that broke Python's own parsing are clear errors too.


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b'{"results": [{"index": 0, "relevance_score": ' + b"9" * 401 + b"}]}", "no finite relevance_score"),
        (b"[" * 200_000, "no valid scores"),
    ],
    ids=["401-digit score", "200000 nested brackets"],
)
def test_numbers_too_large_and_nesting_too_deep_are_server_errors(stub, scorer_for, payload, problem):
    stub.reply(Reply(200, payload))
    with pytest.raises(RerankServerError, match=problem) as raised:
        scorer_for().score("q", ["one text"])
    assert len(str(raised.value)) < 400


# A long list's requests go out concurrently on the sync path too, bounded; several URLs are replicas.


def meets(parties: int) -> Callable[[dict[str, Any]], Reply]:
    """An answer given only once ``parties`` requests are in flight together (else a 500 after 5 s)."""
    barrier = threading.Barrier(parties, timeout=5)

    def answer(body: dict[str, Any]) -> Reply:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return Reply(500, {"error": "requests came one at a time"})
        return Reply(body=sorted_results(body))

    return answer


def test_the_sync_path_sends_a_long_lists_requests_concurrently(stub, scorer_for):
    together = meets(3)
    stub.script.extend([together] * 3)
    assert scorer_for(max_documents=2).score("q", TEXTS) == [len(text) / 10 for text in TEXTS]


def test_sync_concurrency_is_bounded_by_max_concurrency(stub, scorer_for):
    together = meets(2)
    stub.script.extend([together] * 2)
    with pytest.raises(RerankServerError, match="requests came one at a time"):
        scorer_for(max_documents=3, max_concurrency=1, retries=0).score("q", TEXTS)


@pytest.fixture
def second_stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


@pytest.mark.parametrize("path", ["sync", "async"])
def test_requests_spread_across_replicas(stub, second_stub, scorer_for, path):
    scorer = scorer_for(url=[stub.url, second_stub.url], max_documents=1)
    scores = scorer.score("q", TEXTS) if path == "sync" else asyncio.run(scorer.ascore("q", TEXTS))
    assert scores == [len(text) / 10 for text in TEXTS]
    assert len(stub.requests) + len(second_stub.requests) == len(TEXTS) and stub.requests and second_stub.requests


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_dead_replica_rests_while_the_other_serves(stub, scorer_for, caplog, path):
    dead = f"http://127.0.0.1:{free_port()}/rerank"
    scorer = scorer_for(url=[dead, stub.url], retries=0, cooldown_s=60)
    for _ in range(3):
        scores = scorer.score("q", TEXTS) if path == "sync" else asyncio.run(scorer.ascore("q", TEXTS))
        assert scores == [len(text) / 10 for text in TEXTS]
    assert len(stub.requests) == 3
    rests = [record for record in caplog.records if "skipped for 60s while the other 1 serve" in record.getMessage()]
    assert len(rests) <= 1  # tried at most once: then it rests


def test_a_call_fails_only_when_every_replica_failed_it(scorer_for):
    dead = [f"http://127.0.0.1:{free_port()}/rerank" for _ in range(2)]
    with pytest.raises(RerankServerError, match=r"after 2 attempts \(every one of its 2 replicas failed it\)"):
        scorer_for(url=dead, retries=0).score("q", TEXTS)


def test_replicas_are_one_setting_and_one_cache_key(stub, second_stub, scorer_for):
    settings = RetrieverSettings(rerank_backend="http", rerank_url=[second_stub.url, stub.url])
    assert settings.rerank_server.urls == (second_stub.url, stub.url)
    assert RetrieverSettings(rerank_url=f"{stub.url}, {second_stub.url}").rerank_url == (stub.url, second_stub.url)
    with pytest.raises(ValueError, match="names a replica twice"):
        RetrieverSettings(rerank_url=f"{stub.url},{stub.url}")
    one, other = scorer_for(url=[stub.url, second_stub.url]), scorer_for(url=[second_stub.url, stub.url])
    assert one.cache_key == other.cache_key


def test_a_client_per_asyncio_run_is_let_go_once_its_loop_has_closed(stub, scorer_for):
    """A sync web handler calling ``asyncio.run(scorer.ascore(...))`` per request: each run's loop gets a client, and
    the clients of finished runs do not pile up (nothing can use them any more), though their kept-alive connections
    still refer to their loop."""
    stub.server.RequestHandlerClass.protocol_version = "HTTP/1.1"  # connections kept alive, as real servers do

    def live_async_clients() -> int:
        gc.collect()
        return sum(type(thing) is httpx.AsyncClient for thing in gc.get_objects())

    scorer, before = scorer_for(), live_async_clients()
    for _ in range(5):
        assert asyncio.run(scorer.ascore("q", ["a", "bb"])) == pytest.approx([0.1, 0.2])
    assert live_async_clients() - before == 1  # the last run's, until the next call or close()
