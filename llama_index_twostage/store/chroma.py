"""``ChromaStore``: the one owner of a Chroma store's clients, its collection contract, retries and timeouts.

One instance is one store (an embedded folder, the in-memory store or a ``chroma run`` server) and one collection in
it. Every setting it is given holds for that instance alone: two stores on the same server with different timeouts
each keep their own. ``close()`` (or leaving a ``with`` block) releases the clients.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import SecretStr

from llama_index_twostage.closing import Closing
from llama_index_twostage.errors import (
    ChromaAuthenticationError,
    ChromaServerError,
    ChromaUnavailableError,
    CollectionNotFoundError,
    ConfigurationError,
)
from llama_index_twostage.redaction import Redactor
from llama_index_twostage.settings import ChromaMode, DistanceSpace, RetrieverSettings
from llama_index_twostage.store.contract import CollectionContract, verify_collection
from llama_index_twostage.store.embedded import EmbeddedStoreLock

if TYPE_CHECKING:
    from chromadb.api import AsyncClientAPI, ClientAPI
    from chromadb.api.models.AsyncCollection import AsyncCollection
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import GetResult, Include
    from chromadb.config import Settings as ChromaSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")
QUOTED_CHARS = 300  # of a server's error answer, in a message
STORE_FILE = "chroma.sqlite3"  # what every embedded Chroma store holds
DEFAULT_PERSIST_DIR: Path = RetrieverSettings.model_fields["persist_dir"].default


@dataclass(frozen=True)
class HnswParameters:
    """HNSW parameters of a collection; None leaves Chroma's default (ef_search 100, ef_construction 100, M 16)."""

    ef_search: int | None = None
    ef_construction: int | None = None
    max_neighbors: int | None = None

    def given(self) -> dict[str, int]:
        """The parameters that are set, in Chroma's configuration keys."""
        return {key: value for key, value in asdict(self).items() if value is not None}


_BUILD_ONLY = ("ef_construction", "max_neighbors")  # Chroma fixes these when it creates the index


def bound_request_timeout(client: ClientAPI, timeout_s: float) -> None:
    """Bound every request of a synchronous ``HttpClient`` to ``timeout_s``.

    chromadb (1.5) builds its ``httpx.Client`` with ``timeout=None`` and offers no setting for it, so there is no
    public route; this is the one place that reaches inside. ``test_store_logic`` fails loudly if the attribute moves.
    """
    client._server._session.timeout = httpx.Timeout(timeout_s)  # type: ignore[attr-defined]


class ChromaStore(Closing):
    """A Chroma collection and the clients that reach it, owned here and released by :meth:`close`.

    Args:
        collection: the collection name (Chroma's naming rules; checked by ``RetrieverSettings``).
        mode: ``embedded`` (on disk in ``persist_dir``), ``memory`` (in process, shared by the process's in-memory
            stores as Chroma does) or ``server`` (``host``/``port``).
        timeout_s: bound on every server request (sync and async); Chroma's own clients wait without limit.
        retries, retry_backoff_s: retries of a server call that failed in transport, with exponential backoff;
            only idempotent calls come through :meth:`with_retries`.
        distance_space, hnsw: the index of a collection this store creates (``ef_search`` also updates an existing one).
    """

    def __init__(
        self,
        collection: str = "twostage",
        *,
        mode: ChromaMode = "embedded",
        persist_dir: str | Path = DEFAULT_PERSIST_DIR,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
        token: SecretStr | None = None,
        timeout_s: float = 10.0,
        retries: int = 2,
        retry_backoff_s: float = 0.2,
        distance_space: DistanceSpace = "cosine",
        hnsw: HnswParameters | None = None,
    ) -> None:
        if mode == "server" and not host:
            raise ConfigurationError("a Chroma store in server mode needs a host (and port)")
        if not (0 < timeout_s < math.inf and 0 <= retry_backoff_s < math.inf) or retries < 0:
            raise ConfigurationError(
                "timeout_s must be positive and finite, retry_backoff_s finite and not negative, retries not negative"
            )
        self.collection_name = collection
        self.mode = mode
        self.persist_dir = Path(persist_dir).expanduser()
        self.host, self.port, self.ssl = host, port, ssl
        self._token = token
        self._redact = Redactor([token])
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.distance_space = distance_space
        self.hnsw = hnsw or HnswParameters()
        self._client: ClientAPI | None = None
        self._async_client: AsyncClientAPI | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: RetrieverSettings) -> ChromaStore:
        """The store the settings describe (a thin convenience over the constructor)."""
        return cls(
            settings.collection,
            mode=settings.chroma_mode,
            persist_dir=settings.persist_dir,
            host=settings.chroma_host,
            port=settings.chroma_port,
            ssl=settings.chroma_ssl,
            token=settings.chroma_token,
            timeout_s=settings.chroma_timeout_s,
            retries=settings.chroma_retries,
            retry_backoff_s=settings.chroma_retry_backoff_s,
            distance_space=settings.distance_space,
            hnsw=HnswParameters(settings.hnsw_ef_search, settings.hnsw_ef_construction, settings.hnsw_max_neighbors),
        )

    # Where the store is, for messages.

    @property
    def server_address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def server_url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.server_address}"

    def describe(self) -> str:
        """Where the vectors live, for messages and ``twostage info``."""
        if self.mode == "server":
            return f"the Chroma server at {self.server_address}"
        if self.mode == "memory":
            return "the in-memory Chroma store"
        return f"the embedded Chroma store at {str(self.persist_dir)!r}"

    def __repr__(self) -> str:
        return f"ChromaStore(collection={self.collection_name!r}, {self.describe()})"

    # Clients.

    def _auth_headers(self) -> dict[str, str]:
        return {} if self._token is None else {"Authorization": f"Bearer {self._token.get_secret_value()}"}

    def _quote(self, error: BaseException) -> str:
        """``error`` for a message: its type and the start of its text, every secret masked."""
        return self._redact.excerpt(f"{type(error).__name__}: {error}", QUOTED_CHARS)

    def _failed(self, error: BaseException) -> ChromaServerError | ChromaUnavailableError:
        """What a request that Chroma answered with an error, or an embedded store could not complete, tells."""
        if self.mode == "server":
            return ChromaServerError(
                f"the Chroma server at {self.server_address} answered an error ({self._quote(error)}): check the "
                "server's log and any proxy before it, and that chroma_host/chroma_port name a Chroma server"
            )
        disk = ""
        if self.mode == "embedded":
            where = self.persist_dir if self.persist_dir.exists() else Path.cwd()
            disk = f"; {shutil.disk_usage(where).free / 1e6:,.0f} MB free on its disk"
        return ChromaUnavailableError(
            f"{self.describe()} could not complete a request ({self._quote(error)}{disk}): if the disk is full, free "
            "space and run the same command again (what was stored is kept, and a re-run stores the rest); else check "
            "that persist_dir is a writable Chroma store"
        )

    def _refused(self, status: int | str) -> ChromaAuthenticationError:
        token = "the chroma_token given" if self._token is not None else "no chroma_token"
        return ChromaAuthenticationError(
            f"the Chroma server at {self.server_address} refused the request with {token} (authentication failed: "
            f"{status}): set chroma_token (TWOSTAGE_CHROMA_TOKEN) to a token the server accepts"
        )

    def check_server(self) -> None:
        """Probe the server's heartbeat within ``timeout_s``, so an absent server fails fast and clearly."""
        try:
            response = httpx.get(
                f"{self.server_url}/api/v2/heartbeat", timeout=self.timeout_s, headers=self._auth_headers()
            )
            if response.status_code in (401, 403):
                raise self._refused(f"HTTP {response.status_code}")
            response.raise_for_status()
        except httpx.HTTPStatusError as error:  # it answered, with an error or a redirect (never followed)
            raise self._failed(error) from None
        except httpx.HTTPError as error:
            raise ChromaUnavailableError(
                f"Chroma server at {self.server_address} is unreachable ({self._quote(error)}) "
                f"within {self.timeout_s:g}s: start it with `chroma run --host {self.host} --port {self.port}` "
                "or fix chroma_host/chroma_port"
            ) from None

    @staticmethod
    def _chroma_settings() -> ChromaSettings:
        from chromadb.config import Settings

        return Settings(anonymized_telemetry=False, allow_reset=False)

    def _create_client(self) -> ClientAPI:
        import chromadb
        from chromadb.errors import ChromaError

        if self.mode == "memory":
            return chromadb.EphemeralClient(settings=self._chroma_settings())
        if self.mode == "embedded":
            try:
                self.persist_dir.mkdir(parents=True, exist_ok=True)
                EmbeddedStoreLock.acquire(self.persist_dir)  # a second process is refused (see store/embedded.py)
            except OSError as error:
                raise ChromaUnavailableError(
                    f"cannot open the embedded Chroma store at {str(self.persist_dir)!r}: {error}; "
                    "check persist_dir is a writable directory"
                ) from error
            try:
                return chromadb.PersistentClient(path=str(self.persist_dir), settings=self._chroma_settings())
            except (OSError, RuntimeError, ChromaError) as error:
                EmbeddedStoreLock.release(self.persist_dir)  # ChromaError: e.g. a corrupt chroma.sqlite3
                raise ChromaUnavailableError(
                    f"cannot open the embedded Chroma store at {str(self.persist_dir)!r}: {error}; "
                    "check persist_dir is a writable directory holding a Chroma store (or none yet)"
                ) from error
        self.check_server()
        try:
            client = chromadb.HttpClient(
                host=self.host or "localhost",
                port=self.port,
                ssl=self.ssl,
                headers=self._auth_headers(),
                settings=self._chroma_settings(),
            )
        except ValueError as error:  # chromadb reports whatever its first request met (an error answer) as this
            raise self._failed(error) from None
        bound_request_timeout(client, self.timeout_s)
        return client

    @property
    def client(self) -> ClientAPI:
        """The synchronous client, created on first use (thread-safe); while one is open, the HTTP stack's own logs
        mask the token (a server may echo it in a header)."""
        with self._lock:
            if self._client is None:
                self._redact.watch()
                self._client = self._create_client()
            return self._client

    async def async_client(self) -> AsyncClientAPI:
        """The asynchronous HTTP client (server mode), created on first use.

        Queries arriving at once before it exists may each build one; the first stored wins and every caller uses
        it (a lock here would bind to one event loop).
        """
        import chromadb

        if self._async_client is None:
            self._redact.watch()
            await asyncio.to_thread(self.check_server)
            created = await self.bounded(
                chromadb.AsyncHttpClient(
                    host=self.host or "localhost",
                    port=self.port,
                    ssl=self.ssl,
                    headers=self._auth_headers(),
                    settings=self._chroma_settings(),
                )
            )
            if self._async_client is None:
                self._async_client = created
        return self._async_client

    @property
    def is_open(self) -> bool:
        """Whether a client is held (one is created on first use, and again after :meth:`close`)."""
        return self._client is not None

    def close(self) -> None:
        """Release the clients (an embedded store's files, a server's connections). The store can be reopened.

        chromadb's async client has no close of its own; dropping it lets its connections go with it. The in-memory
        store lives for the process, as documented for ``memory`` mode: closing one handle on it keeps its data
        (chromadb would discard it with the last client).
        """
        with self._lock:
            client, self._client = self._client, None
            self._async_client = None
        self._redact.unwatch()
        if client is not None and self.mode != "memory":
            client.close()
        if client is not None and self.mode == "embedded":
            EmbeddedStoreLock.release(self.persist_dir)

    # Faults: timeouts and retries.

    async def bounded(self, call: Awaitable[T]) -> T:
        """Await a server call within ``timeout_s`` (the async client has no timeout of its own)."""
        return await asyncio.wait_for(call, self.timeout_s)

    @contextmanager
    def server_errors(self) -> Iterator[None]:
        """Turn transport failures of the server into one clear :class:`ChromaUnavailableError` (retried), refused
        credentials into a :class:`ChromaAuthenticationError`, and an error the server answered (or an embedded store
        could not write) into one line that quotes it with the token masked; none of these three is retried."""
        from chromadb.errors import AuthorizationError, ChromaAuthError, ChromaError

        try:
            yield
        except (ChromaAuthError, AuthorizationError) as error:
            raise self._refused(type(error).__name__) from None
        except (httpx.TransportError, asyncio.TimeoutError) as error:
            raise ChromaUnavailableError(
                f"lost the Chroma server at {self.server_address} ({self._quote(error)}) within "
                f"{self.timeout_s:g}s: check that `chroma run` is up, then retry"
            ) from None
        except ChromaError as error:
            raise self._failed(error) from None
        except Exception as error:
            if type(error) is not Exception:  # chromadb raises a bare Exception with the body of a non-JSON answer
                raise
            raise self._failed(error) from None

    def _attempts(self) -> int:
        """Only a server is worth retrying: an in-process store that failed once fails the same way again."""
        return self.retries + 1 if self.mode == "server" else 1

    def _retry_delay(self, failed_attempt: int, error: Exception) -> float:
        """The exponential backoff before the next attempt, logged so that a flapping server shows in the logs."""
        delay = self.retry_backoff_s * 2 ** (failed_attempt - 1)
        logger.warning(
            "Chroma call failed (attempt %d of %d), retrying in %.2fs: %s",
            failed_attempt,
            self._attempts(),
            delay,
            error,
        )
        return delay

    def with_retries(self, operation: Callable[[], T]) -> T:
        """Run an idempotent operation; retry server transport failures ``retries`` times with backoff.

        Only reads, and upserts and deletes of deterministic ids, come here, so repeating one whose request did reach
        the server changes nothing. The last failure is a :class:`ChromaUnavailableError`.
        """
        for attempt in range(1, self._attempts()):
            try:
                with self.server_errors():
                    return operation()
            except ChromaUnavailableError as error:
                time.sleep(self._retry_delay(attempt, error))
        with self.server_errors():
            return operation()

    async def awith_retries(self, operation: Callable[[], Awaitable[T]]) -> T:
        """:meth:`with_retries` for coroutines: the backoff awaits, so the event loop keeps serving other queries."""
        for attempt in range(1, self._attempts()):
            try:
                with self.server_errors():
                    return await operation()
            except ChromaUnavailableError as error:
                await asyncio.sleep(self._retry_delay(attempt, error))
        with self.server_errors():
            return await operation()

    # The collection.

    def open_collection(self) -> Collection:
        """The existing collection, to read; a missing one is an error that names it and what exists.

        Reading never creates an embedded store: a mistyped ``persist_dir``, or a folder that holds no store (the
        current one, say), is named instead of silently gaining a new, empty ``chroma.sqlite3``.
        """
        from chromadb.errors import NotFoundError

        if self.mode == "embedded" and not (self.persist_dir / STORE_FILE).is_file():
            raise CollectionNotFoundError(
                f"collection {self.collection_name!r} does not exist: there is no embedded Chroma store at "
                f"{str(self.persist_dir)!r}; ingest documents first (`twostage ingest PATH`) or fix persist_dir"
            )
        client = self.client
        try:
            return client.get_collection(self.collection_name, embedding_function=None)
        except NotFoundError as error:
            existing = sorted(c.name for c in client.list_collections())
            raise CollectionNotFoundError(
                f"collection {self.collection_name!r} does not exist in {self.describe()} "
                f"(existing: {existing or 'none'}): ingest documents first (`twostage ingest PATH`) or fix "
                "'collection'"
            ) from error

    async def open_async_collection(self) -> AsyncCollection:
        """The existing collection through the async HTTP client (server mode)."""
        client = await self.async_client()
        return await self.bounded(client.get_collection(self.collection_name))

    def create_or_open_collection(self, contract: CollectionContract) -> Collection:
        """The collection to write into: created with ``contract`` recorded, or opened and checked against it."""
        from chromadb.errors import InternalError

        try:
            collection = self.open_collection()
        except CollectionNotFoundError:
            try:
                return self.client.create_collection(
                    self.collection_name,
                    metadata=contract.to_metadata(),
                    configuration={"hnsw": {"space": contract.space, **self.hnsw.given()}},
                    embedding_function=None,
                )
            except InternalError:  # created concurrently by another writer: open it below
                collection = self.open_collection()
        verify_collection(
            collection, contract.embed_model, contract.dimension, contract.embed_backend, contract.tolerance
        )
        self._update_hnsw(collection)
        return collection

    def _update_hnsw(self, collection: Collection) -> None:
        """Record a new ``ef_search`` on an existing collection; say so when build parameters differ (they cannot)."""
        current = (collection.configuration or {}).get("hnsw", {})
        wanted = self.hnsw.given()
        if "ef_search" in wanted and current.get("ef_search") != wanted["ef_search"]:
            # Recorded in the collection; a process that already loaded its index keeps the old breadth until it
            # reopens, which is why a new collection gets its breadth at creation.
            collection.modify(configuration={"hnsw": {"ef_search": wanted["ef_search"]}})
        for key in _BUILD_ONLY:
            if key in wanted and current.get(key) != wanted[key]:
                logger.warning(
                    "collection %r was built with %s=%s; hnsw_%s=%s applies only to new collections: ingest into a "
                    "new collection to rebuild the index with it",
                    collection.name,
                    key,
                    current.get(key),
                    key,
                    wanted[key],
                )

    def max_batch_size(self) -> int:
        """The most records Chroma takes in one request."""
        return self.with_retries(self.client.get_max_batch_size)

    def pages(
        self, collection: Collection, include: Include, page_size: int, where: dict[str, Any] | None = None
    ) -> Iterator[GetResult]:
        """Every record of ``collection`` (that matches ``where``) with the ``include``d fields, ``page_size`` at a
        time (a whole collection may not fit in memory or in one request); each page is a retried read."""
        page_size = min(page_size, self.max_batch_size())
        offset = 0
        while True:
            read = partial(collection.get, where=where, include=include, limit=page_size, offset=offset)
            page = self.with_retries(read)
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def records(
        self, collection: Collection, ids: Sequence[str], include: Include, page_size: int
    ) -> Iterator[GetResult]:
        """The records of these ids (absent ones are left out), ``page_size`` ids per retried read."""
        page_size = min(page_size, self.max_batch_size())
        for start in range(0, len(ids), page_size):
            yield self.with_retries(partial(collection.get, ids=list(ids[start : start + page_size]), include=include))
