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
exponential backoff (``Retry-After`` wins, each wait at most ``timeout_s``), so a request fails within about
``(retries + 1) * timeout_s`` per phase plus ``retries * timeout_s`` of waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
import weakref
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import SecretStr

from llama_index_twostage.errors import ConfigurationError, RerankAuthenticationError, RerankServerError
from llama_index_twostage.models import ModelPool
from llama_index_twostage.settings import RerankApi, RetrieverSettings

logger = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({429, 503})  # rate-limited, or overloaded / still loading: worth another try
REFUSED_STATUSES = frozenset({401, 403})
Outcome = httpx.Response | httpx.TransportError


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
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise ValueError(f"document {index} has no finite {field} (got {score!r})")
        scores[index] = float(score)
    return [scores[index] for index in range(documents)]


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
    requests (concurrently on the async path) and merged in order. At most ``max_concurrency`` requests are in
    flight at once from sync callers, and as many from each event loop: the client's connection limit is the
    bound, and a request waits for a free connection.

    The scorer has no token window: the server truncates by its own, so the reranker cannot count truncated pairs
    (``pairs_truncated`` is absent from the stage metadata) and ``max-window`` is refused.

    Args:
        url: the full endpoint, path included (e.g. ``http://127.0.0.1:7997/rerank``).
        model: the model name sent to the server (``cohere`` schema).
        api: ``"cohere"`` or ``"tei"`` (see the module's description).
        api_key: sent as ``Authorization: Bearer``; never printed, logged or echoed in errors.
        normalize: 0-1 scores (see the module's description for what each schema does).
        timeout_s: bound on each phase (connect, send, read) of a request.
        retries, retry_backoff_s: retries of transport failures, 429 and 503, and the first wait (doubling).
        max_documents: documents per request.
        max_concurrency: requests in flight at once (sync callers; each event loop).
    """

    backend = "http"
    window = None

    def __init__(
        self,
        url: str,
        *,
        model: str,
        api: RerankApi = "cohere",
        api_key: SecretStr | None = None,
        normalize: bool = False,
        timeout_s: float = 30.0,
        retries: int = 2,
        retry_backoff_s: float = 0.5,
        max_documents: int = 32,
        max_concurrency: int = 16,
    ) -> None:
        if not (0 < timeout_s < math.inf and 0 <= retry_backoff_s < math.inf) or retries < 0:
            raise ConfigurationError(
                "timeout_s must be positive and finite, retry_backoff_s finite and not negative, retries not negative"
            )
        if max_documents <= 0 or max_concurrency <= 0:
            raise ConfigurationError("max_documents and max_concurrency must be positive")
        self.url, self.model, self.api, self.normalize = url, model, api, normalize
        self.timeout_s, self.retries, self.retry_backoff_s = timeout_s, retries, retry_backoff_s
        self.max_documents = max_documents
        self._api_key = api_key
        secret = api_key.get_secret_value() if api_key is not None else ""
        self._client_options: dict[str, Any] = {
            "headers": {"Authorization": f"Bearer {secret}"} if secret else {},
            "timeout": httpx.Timeout(timeout_s, pool=None),  # waiting for a free connection is the concurrency bound
            "limits": httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        }
        self._client = httpx.Client(**self._client_options)
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: RetrieverSettings, *, pool: ModelPool | None = None) -> HttpRerankScorer:
        """The scorer the ``rerank_*`` settings describe (``rerank_model`` is the name sent); through ``pool``, one
        per pool and set of options, closed when the pool closes."""
        if settings.rerank_url is None:
            raise ConfigurationError("rerank_backend 'http' needs rerank_url, e.g. 'http://127.0.0.1:7997/rerank'")
        options: dict[str, Any] = {
            "url": settings.rerank_url,
            "model": settings.rerank_model,
            "api": settings.rerank_api,
            "api_key": settings.rerank_api_key,  # a SecretStr: hashed by its value, printed masked
            "normalize": settings.normalize_scores,
            "timeout_s": settings.rerank_timeout_s,
            "retries": settings.rerank_retries,
            "retry_backoff_s": settings.rerank_retry_backoff_s,
            "max_documents": settings.rerank_max_documents,
            "max_concurrency": settings.rerank_max_concurrency,
        }
        if pool is None:
            return cls(**options)
        return pool.get(("rerank-server", *sorted(options.items())), lambda: cls(**options))

    @property
    def name(self) -> str:
        return self.model

    @property
    def cache_key(self) -> tuple[str, str, str, str, bool]:
        """What changes a score: the server, the model it runs, the schema and the activation asked for."""
        return ("http", self.url, self.model, self.api, self.normalize)

    def _bodies(self, query: str, texts: list[str]) -> list[tuple[dict[str, Any], int]]:
        """The requests for ``texts``, at most ``max_documents`` each, with their document counts."""
        chunks = [texts[start : start + self.max_documents] for start in range(0, len(texts), self.max_documents)]
        return [(request_body(self.api, self.model, query, chunk, self.normalize), len(chunk)) for chunk in chunks]

    def score(self, query: str, texts: list[str]) -> list[float]:
        if self._closed:
            raise self._closed_error()
        return [score for body, count in self._bodies(query, texts) for score in self._post(body, count)]

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        """:meth:`score` on this event loop's client; the requests of a long list go out concurrently."""
        client = self._async_client()
        scored = await asyncio.gather(*(self._apost(client, body, count) for body, count in self._bodies(query, texts)))
        return [score for chunk in scored for score in chunk]

    def _post(self, body: dict[str, Any], documents: int) -> list[float]:
        for attempt in itertools.count():
            try:
                outcome: Outcome = self._client.post(self.url, json=body)
            except httpx.TransportError as error:
                outcome = error
            wait = self._retry_wait(outcome, attempt)
            if wait is None:
                return self._scores(outcome, documents)
            time.sleep(wait)

    async def _apost(self, client: httpx.AsyncClient, body: dict[str, Any], documents: int) -> list[float]:
        for attempt in itertools.count():
            try:
                outcome: Outcome = await client.post(self.url, json=body)
            except httpx.TransportError as error:
                outcome = error
            wait = self._retry_wait(outcome, attempt)
            if wait is None:
                return self._scores(outcome, documents)
            await asyncio.sleep(wait)

    def _retry_wait(self, outcome: Outcome, attempt: int) -> float | None:
        """None when ``outcome`` is a response to read; else the wait before the next attempt (``Retry-After`` or
        the backoff, at most ``timeout_s``). Raises once no retry is left."""
        if isinstance(outcome, httpx.Response) and outcome.status_code not in RETRIED_STATUSES:
            return None
        if attempt >= self.retries:
            raise self._failure(outcome, attempts=attempt + 1)
        asked = retry_after_s(outcome) if isinstance(outcome, httpx.Response) else None
        wait = min(self.retry_backoff_s * 2**attempt if asked is None else asked, self.timeout_s)
        logger.warning(
            "rerank request to %s failed (attempt %d of %d: %s), retrying in %.2fs",
            self.url,
            attempt + 1,
            self.retries + 1,
            self._describe(outcome),
            wait,
        )
        return wait

    def _scores(self, outcome: Outcome, documents: int) -> list[float]:
        """The scores in a final response, checked; any other outcome is the error it deserves."""
        if not isinstance(outcome, httpx.Response) or outcome.is_error:
            raise self._failure(outcome, attempts=1)
        try:
            scores = read_scores(self.api, outcome.json(), documents)
        except ValueError as error:  # invalid JSON is a ValueError too
            raise self._error(f"answered HTTP {outcome.status_code} with no valid scores ({error})") from None
        if self.normalize and self.api == "cohere" and any(not 0 <= score <= 1 for score in scores):
            raise self._error(
                f"returned scores outside 0-1 (e.g. {max(scores, key=lambda s: abs(s - 0.5)):g}) though "
                "normalize_scores is set: it returns logits; unset normalize_scores to rank by them"
            )
        return scores

    def _failure(self, outcome: Outcome, attempts: int) -> RerankServerError:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        if not isinstance(outcome, httpx.Response):
            return self._error(
                f"did not answer{tried} ({self._describe(outcome)}; each phase bounded by {self.timeout_s:g}s): "
                "check that it is up and the URL is right, then retry"
            )
        if outcome.status_code in REFUSED_STATUSES:
            return RerankAuthenticationError(
                self._redact(
                    f"rerank server at {self.url} refused the credentials (HTTP {outcome.status_code}): set "
                    "rerank_api_key to a key it accepts"
                )
            )
        return self._error(f"failed{tried}: {self._describe(outcome)}")

    def _describe(self, outcome: Outcome) -> str:
        if isinstance(outcome, httpx.Response):
            body = outcome.text[:300].strip()
            return f"HTTP {outcome.status_code} {outcome.reason_phrase}" + (f": {body}" if body else "")
        return f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__

    def _error(self, problem: str) -> RerankServerError:
        return RerankServerError(self._redact(f"rerank server at {self.url} {problem}"))

    def _redact(self, message: str) -> str:
        """The message with the key masked, wherever a server's answer may have echoed it."""
        secret = self._api_key.get_secret_value() if self._api_key is not None else ""
        return message.replace(secret, "**********") if secret else message

    def _closed_error(self) -> ConfigurationError:
        return ConfigurationError(f"the scorer for {self.url} is closed (its pipeline was closed): build a new one")

    def _async_client(self) -> httpx.AsyncClient:
        """This event loop's client, opened on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise self._closed_error()
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
