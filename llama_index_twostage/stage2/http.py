"""Stage 2 on a rerank server: ``HttpRerankScorer`` sends the pairs to a ``/rerank`` endpoint and reads one score per
document back, so forward passes run on a shared (GPU) server while the reranker keeps everything it adds: formatting,
de-duplication, the score cache, the cascade, the stage metadata and the events.

Two schemas cover the servers people run:

- ``cohere``: request ``{model, query, documents, top_n, return_documents}``, response ``{results: [{index,
  relevance_score}, ...]}`` sorted by score (so matched by ``index``). Cohere v1/v2, Jina, Infinity, vLLM, Xinference
  and LiteLLM speak it. They return their model's activation: 0-1 for sigmoid rerankers (the usual case); the scores
  are passed on as they come, and with ``normalize`` each must lie in 0-1 (a server that returns logits is an error
  that says so, never a sigmoid applied twice).
- ``tei`` (Hugging Face text-embeddings-inference): request ``{query, texts, raw_scores, truncate}``, response a bare
  list of ``{index, score}``. TEI computes both conventions: ``normalize`` asks for its sigmoid scores, otherwise
  for the raw logits, as a local logit model gives them.

Every answer is checked: invalid JSON, fewer or more results than documents, a missing, repeated or out-of-range
index, a score that is not a finite number and any HTTP error status end in a :class:`RerankServerError` naming the
URL and status (never the key), not in a silently short list. Transport failures, 429 and 503 are retried with
exponential backoff (``Retry-After`` wins, each wait at most ``timeout_s``).

Every call is bounded, whatever the server does: one attempt ends within ``timeout_s`` (connect, send and the
whole answer, even one that trickles in a byte at a time), and the call, retries and waits included, within its
deadline of ``attempts * timeout_s`` (``retries + 1`` attempts, or one per replica where there are more). An
answer is read up to ``max_response_bytes`` after decompression (an error status only as far as the excerpt its
message quotes), and a redirect is never followed: it is an error that names its ``Location``. The key is masked,
in any piece of six or more characters, in every error and log line, also where a server echoes it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from llama_index_twostage.errors import ConfigurationError, RerankAuthenticationError, RerankServerError, one_line
from llama_index_twostage.redaction import Redactor
from llama_index_twostage.retry import RetryPolicy
from llama_index_twostage.stage2.replicas import Replicas

logger = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({429, 503})  # rate-limited, or overloaded / still loading: worth another try
REFUSED_STATUSES = frozenset({401, 403})
ERROR_EXCERPT_BYTES = 4096  # what is read of an error answer: its message quotes the first 300 characters
ERROR_EXCERPT_CHARS = 300

RerankApi = Literal["cohere", "tei"]


class RerankServerConfig(BaseModel):
    """Where a rerank server (or its replicas) is and how it is called: what :class:`HttpRerankScorer` is built from."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    urls: tuple[str, ...] = Field(
        (),
        description="Full endpoint URL of the rerank server, path included (servers differ), e.g. "
        "'http://127.0.0.1:7997/rerank'; several, comma-separated (or a list), are replicas of one model: requests "
        "spread across them and one that fails rests rerank_cooldown_s.",
    )
    api: RerankApi = Field(
        "cohere",
        description="Request and response schema: 'cohere' (Cohere, Jina, Infinity, vLLM, Xinference, LiteLLM) or "
        "'tei' (Hugging Face text-embeddings-inference).",
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer token for the rerank server; never printed, logged or echoed in errors."
    )
    timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Bound on one rerank request, the whole answer included; a call ends within (rerank_retries + 1) "
        "x rerank_timeout_s, retries and their waits included.",
    )
    retry: RetryPolicy = Field(
        RetryPolicy(retries=2, backoff_s=0.5),
        description="Retries of a request that failed in transport or got 429/503; a Retry-After header wins over "
        "the backoff (either at most rerank_timeout_s).",
    )
    max_documents: int = Field(
        32,
        gt=0,
        description="Documents per rerank request; longer candidate lists are split and merged in order (TEI "
        "accepts 32 by default, Cohere 1,000).",
    )
    max_concurrency: int = Field(
        16, gt=0, description="Rerank requests in flight at once: for sync callers, and for each event loop."
    )
    cooldown_s: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        description="How long a rerank server replica that failed is skipped while the others serve.",
    )
    max_response_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="The most bytes of one rerank answer read, after decompression; a larger answer is an error.",
    )

    @field_validator("urls", mode="before")
    @classmethod
    def _replicas(cls, value: Any) -> Any:
        """One URL, several comma-separated (as a variable gives them), or a list."""
        return [url.strip() for url in value.split(",")] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _endpoints(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"rerank_url {url!r} is not an http(s) URL: give e.g. 'http://127.0.0.1:7997/rerank'")
        if len(set(urls)) != len(urls):
            raise ValueError(f"rerank_url names a replica twice: {', '.join(urls)!r}")
        return urls


@dataclass(frozen=True)
class Answer:
    """A server's answer: its status line and headers (``response``), and the body as far as it was read."""

    response: httpx.Response
    body: bytes

    @property
    def status(self) -> int:
        return self.response.status_code


Outcome = Answer | httpx.TransportError


class Deadline:
    """A point in time a call must end by; each attempt gets what is left, at most ``attempt_s``."""

    def __init__(self, seconds: float, attempt_s: float) -> None:
        self.seconds, self.attempt_s = seconds, attempt_s
        self._ends = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._ends - time.monotonic()

    def for_attempt(self) -> float:
        return max(0.0, min(self.attempt_s, self.remaining()))


class BoundedBody:
    """An answer's decoded bytes as they arrive, within the attempt's time and the size allowed.

    A success is read whole, up to ``limit`` bytes (more is an error: a server gone wrong, or a decompression bomb);
    an error status only up to :data:`ERROR_EXCERPT_BYTES`, the rest left unread. A body still arriving when the
    attempt's time is up ends it as a read timeout, like a server that sends nothing.
    """

    def __init__(self, response: httpx.Response, limit: int, ends: float, seconds: float) -> None:
        self.response = response
        self.limit = limit
        self.wanted = limit if response.is_success else ERROR_EXCERPT_BYTES
        self._ends, self._seconds = ends, seconds  # the attempt's end (time.monotonic), and its length
        self._chunks: list[bytes] = []
        self._size = 0

    def take(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False once enough is read. Raises when the body is too large or too slow."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > self.wanted and self.response.is_success:
            raise AnswerTooLarge(self.limit)
        if time.monotonic() > self._ends:
            raise httpx.ReadTimeout(f"the answer was still arriving after {self._seconds:g}s")
        return self._size < self.wanted

    def answer(self) -> Answer:
        return Answer(self.response, b"".join(self._chunks)[: self.wanted])


class AnswerTooLarge(Exception):
    """An answer passed the byte limit (turned into a :class:`RerankServerError` by the scorer)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def request_body(api: RerankApi, model: str, query: str, texts: list[str], normalize: bool) -> dict[str, Any]:
    """The JSON body that asks ``api`` for one score per text."""
    if api == "tei":
        # truncate: a pair longer than the model's window is cut, as a local cross-encoder does, not refused.
        return {"query": query, "texts": texts, "raw_scores": not normalize, "truncate": True}
    return {"model": model, "query": query, "documents": texts, "top_n": len(texts), "return_documents": False}


def read_scores(api: RerankApi, payload: Any, documents: int) -> list[float]:
    """One score per document, in document order, from a server's answer; a ``ValueError`` says what is wrong."""
    if api == "tei":
        results, field = payload, "score"
    else:
        results, field = (payload.get("results") if isinstance(payload, dict) else None), "relevance_score"
    if not isinstance(results, list):
        expected = "a list of {index, score}" if api == "tei" else "an object with results: [{index, relevance_score}]"
        raise ValueError(f"expected {expected}, got {type(results if api == 'tei' else payload).__name__}")
    if len(results) != documents:
        raise ValueError(f"{len(results)} results for {documents} documents")
    scores: dict[int, float] = {}
    for result in results:
        index = result.get("index") if isinstance(result, dict) else None
        score = result.get(field) if isinstance(result, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < documents:
            raise ValueError(f"result index {index!r} is not a document index (0 to {documents - 1})")
        if index in scores:
            raise ValueError(f"document {index} is scored twice")
        number = finite(score)
        if number is None:
            shown = repr(score) if len(repr(score)) <= 40 else f"{repr(score)[:40]}..."
            raise ValueError(f"document {index} has no finite {field} (got {shown})")
        scores[index] = number
    return [scores[index] for index in range(documents)]


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (not a number, NaN, infinite, or an integer too large for a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # a 400-digit integer is valid JSON
        return None
    return number if math.isfinite(number) else None


def retry_after_s(response: httpx.Response) -> float | None:
    """The server's ``Retry-After`` in seconds (a number or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        asked_at = parsedate_to_datetime(value) - parsedate_to_datetime(response.headers["date"])
        return max(0.0, asked_at.total_seconds())
    except (KeyError, TypeError, ValueError):
        return None


class HttpRerankScorer:
    """A :class:`~llama_index_twostage.stage2.scorers.PairScorer` whose forward passes run on a rerank server.

    Sync calls go through one pooled ``httpx.Client``; async calls through an ``httpx.AsyncClient`` per event loop
    (an async connection belongs to the loop that opened it), so waiting for the server takes no thread. Both are
    owned here and closed by :meth:`close`. A candidate list longer than ``max_documents`` is sent as several
    requests, concurrently on both paths (the sync path through this scorer's own threads), and merged in order. At
    most ``max_concurrency`` requests are in flight at once from sync callers, and as many from each event loop:
    the client's connection limit is the bound, and a request waits for a free connection. Several URLs are replicas
    of one model: requests spread across them in turn, and one that fails rests a while (:class:`Replicas`).

    The scorer has no token window: the server truncates by its own, so the reranker cannot count truncated pairs
    (``pairs_truncated`` is absent from the stage metadata) and ``max-window`` is refused.

    Args:
        config: the server and how it is called (:class:`RerankServerConfig`), or just its URL(s): the full
            endpoint, path included (e.g. ``http://127.0.0.1:7997/rerank``); several are replicas. Keyword
            arguments are a shorthand for the config's other fields (``api="tei"``, ``timeout_s=5``, ``retry=...``).
            A call's deadline is ``attempts * timeout_s``, waits included, where ``attempts`` is ``retries + 1``, or
            the number of replicas if larger; moving on to a replica not tried yet waits for nothing.
        model: the model name sent to the server (``cohere`` schema).
        normalize: 0-1 scores (see the module's description for what each schema does).
    """

    backend = "http"
    window = None

    def __init__(
        self,
        config: RerankServerConfig | str | Sequence[str],
        *,
        model: str,
        normalize: bool = False,
        **fields: Any,
    ) -> None:
        if isinstance(config, RerankServerConfig) and fields:
            raise ConfigurationError(f"give a RerankServerConfig or its fields {sorted(fields)}, not both")
        try:
            self.config = (
                config if isinstance(config, RerankServerConfig) else RerankServerConfig(urls=config, **fields)
            )
        except ValidationError as error:
            raise ConfigurationError(one_line(error)) from None
        config = self.config
        if not config.urls:
            raise ConfigurationError("a rerank server needs its URL (rerank_url), e.g. 'http://127.0.0.1:7997/rerank'")
        self.replicas = Replicas(config.urls, config.cooldown_s)
        self.url = ", ".join(self.replicas.urls)
        self.model, self.api, self.normalize = model, config.api, normalize
        self.timeout_s, self.retry = config.timeout_s, config.retry
        self.max_documents, self.max_response_bytes = config.max_documents, config.max_response_bytes
        self.attempts = max(self.retry.attempts, len(self.replicas))
        self.deadline_s = self.attempts * self.timeout_s
        self._redact = Redactor([config.api_key])
        self._redact.watch(self)
        secret = config.api_key.get_secret_value() if config.api_key is not None else ""
        concurrency = config.max_concurrency
        self._client_options: dict[str, Any] = {
            "headers": {"Authorization": f"Bearer {secret}"} if secret else {},
            "timeout": httpx.Timeout(self.timeout_s, pool=None),  # waiting for a connection is the concurrency bound
            "follow_redirects": False,  # a redirect could carry the key elsewhere: it is an error
            "limits": httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        }
        self._client = httpx.Client(**self._client_options)
        self._async_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="twostage-rerank-http")
        self._lock = threading.Lock()
        self._closed = False

    @property
    def name(self) -> str:
        return self.model

    @property
    def cache_key(self) -> tuple[str, str, str, str, bool]:
        """What changes a score: the server, the model it runs, the schema and the activation asked for."""
        return ("http", ",".join(sorted(self.replicas.urls)), self.model, self.api, self.normalize)

    def _bodies(self, query: str, texts: list[str]) -> list[tuple[dict[str, Any], int]]:
        """The requests for ``texts``, at most ``max_documents`` each, with their document counts."""
        chunks = [texts[start : start + self.max_documents] for start in range(0, len(texts), self.max_documents)]
        return [(request_body(self.api, self.model, query, chunk, self.normalize), len(chunk)) for chunk in chunks]

    def score(self, query: str, texts: list[str]) -> list[float]:
        """One score per text; the requests of a long list go out concurrently, at most ``max_concurrency``."""
        if self._closed:
            raise self._closed_error()
        bodies = self._bodies(query, texts)
        if len(bodies) == 1:
            return self._post(*bodies[0])
        return [score for chunk in self._threads.map(lambda request: self._post(*request), bodies) for score in chunk]

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        """:meth:`score` on this event loop's client; the requests of a long list go out concurrently."""
        client = self._async_client()
        scored = await asyncio.gather(*(self._apost(client, body, count) for body, count in self._bodies(query, texts)))
        return [score for chunk in scored for score in chunk]

    def _post(self, body: dict[str, Any], documents: int) -> list[float]:
        deadline, tried = Deadline(self.deadline_s, self.timeout_s), set[str]()
        for attempt in itertools.count():
            url = self.replicas.choose(tried)
            wait = self._retry_wait(url, outcome := self._attempt(url, body, deadline), attempt, deadline, tried)
            if wait is None:
                return self._scores(url, outcome, documents)
            time.sleep(wait)

    async def _apost(self, client: httpx.AsyncClient, body: dict[str, Any], documents: int) -> list[float]:
        deadline, tried = Deadline(self.deadline_s, self.timeout_s), set[str]()
        for attempt in itertools.count():
            url = self.replicas.choose(tried)
            outcome = await self._aattempt(client, url, body, deadline)
            wait = self._retry_wait(url, outcome, attempt, deadline, tried)
            if wait is None:
                return self._scores(url, outcome, documents)
            await asyncio.sleep(wait)

    def _attempt(self, url: str, body: dict[str, Any], deadline: Deadline) -> Outcome:
        """One request, its answer read within the attempt's share of the deadline and the byte limit."""
        seconds = deadline.for_attempt()
        ends = time.monotonic() + seconds  # connecting and the headers count too
        try:
            with self._client.stream("POST", url, json=body, timeout=httpx.Timeout(seconds, pool=None)) as sent:
                reader = BoundedBody(sent, self.max_response_bytes, ends, seconds)
                for chunk in sent.iter_bytes():
                    if not reader.take(chunk):
                        break
                return reader.answer()
        except httpx.TransportError as error:
            return error
        except AnswerTooLarge as error:
            raise self._too_large(url, error) from None

    async def _aattempt(self, client: httpx.AsyncClient, url: str, body: dict[str, Any], deadline: Deadline) -> Outcome:
        """:meth:`_attempt` on the event loop: the attempt's share of the deadline bounds it whole."""
        seconds = deadline.for_attempt()
        ends = time.monotonic() + seconds
        try:
            async with asyncio.timeout(seconds):
                async with client.stream("POST", url, json=body, timeout=httpx.Timeout(seconds)) as sent:
                    reader = BoundedBody(sent, self.max_response_bytes, ends, seconds)
                    async for chunk in sent.aiter_bytes():
                        if not reader.take(chunk):
                            break
                    return reader.answer()
        except httpx.TransportError as error:
            return error
        except TimeoutError:
            return httpx.ReadTimeout(f"no whole answer within {seconds:g}s")
        except AnswerTooLarge as error:
            raise self._too_large(url, error) from None

    def _retry_wait(
        self, url: str, outcome: Outcome, attempt: int, deadline: Deadline, tried: set[str]
    ) -> float | None:
        """None when ``outcome`` is an answer to read; else the wait before the next attempt: none when a replica
        not tried yet takes it, else ``Retry-After`` or the backoff, at most ``timeout_s``. Raises once no attempt
        is left, or no time for one."""
        if isinstance(outcome, Answer) and outcome.status not in RETRIED_STATUSES:
            self.replicas.answered(url)
            return None
        described = self._describe(outcome)
        self.replicas.failed(url, described)
        tried.add(url)
        if attempt + 1 >= self.attempts:
            raise self._failure(url, outcome, attempts=attempt + 1)
        asked = retry_after_s(outcome.response) if isinstance(outcome, Answer) else None
        wait = min(self.retry.delay(attempt + 1) if asked is None else asked, self.timeout_s)
        if len(tried) < len(self.replicas):
            wait = 0.0  # a replica not tried yet takes it at once
        if wait >= deadline.remaining():
            raise self._failure(url, outcome, attempts=attempt + 1, out_of_time=True)
        logger.warning(
            "rerank request to %s failed (attempt %d of %d: %s), retrying in %.2fs",
            url,
            attempt + 1,
            self.attempts,
            described,
            wait,
        )
        return wait

    def _scores(self, url: str, outcome: Outcome, documents: int) -> list[float]:
        """The scores in a final answer, checked; any other outcome (a redirect too) is the error it deserves."""
        if not isinstance(outcome, Answer) or not outcome.response.is_success:
            raise self._failure(url, outcome, attempts=1)
        try:
            scores = read_scores(self.api, json.loads(outcome.body), documents)
        except (ValueError, RecursionError) as error:  # invalid JSON is a ValueError; 200,000 nested [ recurse
            raise self._error(url, f"answered HTTP {outcome.status} with no valid scores ({error})") from None
        if self.normalize and self.api == "cohere" and any(not 0 <= score <= 1 for score in scores):
            raise self._error(
                url,
                f"returned scores outside 0-1 (e.g. {max(scores, key=lambda s: abs(s - 0.5)):g}) though "
                "normalize_scores is set: it returns logits; unset normalize_scores to rank by them",
            )
        return scores

    def _failure(self, url: str, outcome: Outcome, attempts: int, out_of_time: bool = False) -> RerankServerError:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        if attempts > 1 and len(self.replicas) > 1:
            tried += f" (every one of its {len(self.replicas)} replicas failed it)"
        bound = (
            f"within the call's deadline of {self.deadline_s:g}s (attempts x rerank_timeout_s, retries and waits "
            "included)"
        )
        if out_of_time:
            return self._error(url, f"failed{tried} and no time was left to retry {bound}: {self._describe(outcome)}")
        if not isinstance(outcome, Answer):
            return self._error(
                url,
                f"did not answer{tried} ({self._describe(outcome)}) {bound}: check that it is up and the URL is "
                "right, or raise rerank_timeout_s",
            )
        if outcome.status in REFUSED_STATUSES:
            return RerankAuthenticationError(
                self._redact(
                    f"rerank server at {url} refused the credentials (HTTP {outcome.status}): set "
                    "rerank_api_key to a key it accepts"
                )
            )
        if outcome.response.is_redirect:
            location = outcome.response.headers.get("location", "nowhere")
            return self._error(
                url,
                f"answered HTTP {outcome.status} redirecting to {location}: redirects are not followed (the key "
                "would go along); set rerank_url to the endpoint itself",
            )
        return self._error(url, f"failed{tried}: {self._describe(outcome)}")

    def _too_large(self, url: str, error: AnswerTooLarge) -> RerankServerError:
        return self._error(
            url,
            f"answered more than rerank_max_response_bytes ({error.limit:,} bytes after decompression): a rerank "
            "answer is a few bytes per document; check the URL, or raise rerank_max_response_bytes",
        )

    def _describe(self, outcome: Outcome) -> str:
        """The outcome for a message: the status line and the start of the body, or the transport error; masked."""
        if isinstance(outcome, Answer):
            excerpt = self._redact.excerpt(outcome.body.decode("utf-8", "replace"), ERROR_EXCERPT_CHARS)
            described = f"HTTP {outcome.status} {outcome.response.reason_phrase}" + (f": {excerpt}" if excerpt else "")
        else:
            described = f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__
        return self._redact(described)

    def _error(self, url: str, problem: str) -> RerankServerError:
        return RerankServerError(self._redact(f"rerank server at {url} {problem}"))

    def _closed_error(self) -> ConfigurationError:
        return ConfigurationError(f"the scorer for {self.url} is closed (its pipeline was closed): build a new one")

    def _async_client(self) -> httpx.AsyncClient:
        """This event loop's client, opened on first use. Clients of loops that have closed since (``asyncio.run``
        per call) are dropped: nothing can run on their loop, and their connections close with them."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            for closed in [other for other in self._async_clients if other.is_closed()]:
                del self._async_clients[closed]
            client = self._async_clients.get(loop)
            if client is None:
                client = self._async_clients[loop] = httpx.AsyncClient(**self._client_options)
            return client

    def close(self) -> None:
        """Close the sync client and each event loop's client on its loop (now if idle, scheduled if running; nothing
        runs on a closed loop any more, so its client is dropped)."""
        with self._lock:
            self._closed = True
            clients = list(self._async_clients.items())
            self._async_clients.clear()
        self._client.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._redact.unwatch()
        for loop, client in clients:
            if loop.is_closed():
                continue
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            else:
                loop.run_until_complete(client.aclose())

    async def aclose(self) -> None:
        """:meth:`close`, awaiting this event loop's client."""
        with self._lock:
            client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()

    def __repr__(self) -> str:
        return f"HttpRerankScorer({self.url!r}, model={self.model!r}, api={self.api!r})"
