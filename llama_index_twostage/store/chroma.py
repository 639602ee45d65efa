"""``ChromaStore``: the one owner of a Chroma store's clients, its collection contract, retries and timeouts.

One instance is one store (an embedded folder, the in-memory store or a ``chroma run`` server) and one collection in
it. Every setting it is given holds for that instance alone: two stores on the same server with different timeouts
each keep their own. ``close()`` (or leaving a ``with`` block) releases the clients.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from llama_index_twostage.closing import Closing
from llama_index_twostage.errors import (
    ChromaAuthenticationError,
    ChromaServerError,
    ChromaUnavailableError,
    CollectionNotFoundError,
    ConfigurationError,
    one_line,
)
from llama_index_twostage.redaction import Redactor
from llama_index_twostage.retry import RetryPolicy
from llama_index_twostage.store.contract import CollectionContract, DistanceSpace, verify_collection
from llama_index_twostage.store.embedded import EmbeddedStoreLock

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import GetResult, Include
    from chromadb.config import Settings as ChromaSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")
QUOTED_CHARS = 300  # of a server's error answer, in a message
STORE_FILE = "chroma.sqlite3"  # what every embedded Chroma store holds

ChromaMode = Literal["embedded", "memory", "server"]
_COLLECTION_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


def check_collection_name(name: str) -> str:
    """Apply Chroma's naming rules up front, so a bad name fails at configuration time, not at first write."""
    problem = None
    if not _COLLECTION_NAME.fullmatch(name):
        problem = "use 3-512 characters from [a-zA-Z0-9._-], starting and ending with a letter or digit"
    elif ".." in name:
        problem = "do not use two consecutive periods"
    else:
        try:
            ipaddress.ip_address(name)
            problem = "do not use an IP address"
        except ValueError:
            pass
    if problem:
        raise ValueError(f"invalid Chroma collection name {name!r}: {problem}")
    return name


CollectionName = Annotated[str, AfterValidator(check_collection_name)]


def split_server_url(url: str, given: dict[str, Any]) -> dict[str, Any]:
    """``http(s)://host[:port]`` -> host, port and ssl; refused where the other fields given disagree."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(
            f"chroma_host {url!r} is not a server address: give a host name (e.g. 'localhost') or a URL such as "
            "'http://localhost:8000' without a path"
        )
    values: dict[str, Any] = {"host": parts.hostname, "ssl": parts.scheme == "https"}
    if parts.port is not None:
        values["port"] = parts.port
    for key, value in values.items():
        if key != "host" and key in given and str(given[key]).lower() != str(value).lower():
            raise ValueError(
                f"chroma_host {url!r} says chroma_{key}={value}, but chroma_{key} is set to {given[key]!r}: give one"
            )
    return values


class HnswParameters(BaseModel):
    """HNSW parameters of a collection; None leaves Chroma's default (ef_search 100, ef_construction 100, M 16)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ef_search: int | None = Field(
        None,
        gt=0,
        description="HNSW search breadth of the collection (unset: Chroma's 100). Keep it well above recall_k on "
        "large collections: the approximate index otherwise loses candidates before any reranker sees them.",
    )
    ef_construction: int | None = Field(
        None,
        gt=0,
        description="HNSW build breadth of newly created collections (unset: Chroma's 100). A wider build makes a "
        "better graph: slower ingestion, higher recall at the same ef_search. Fixed once the collection exists.",
    )
    max_neighbors: int | None = Field(
        None,
        ge=2,
        description="HNSW links per vector (M) of newly created collections (unset: Chroma's 16). More links: more "
        "memory and slower ingestion, higher recall on large collections. Fixed once the collection exists.",
    )

    def given(self) -> dict[str, int]:
        """The parameters that are set, in Chroma's configuration keys."""
        return self.model_dump(exclude_none=True)


_BUILD_ONLY = ("ef_construction", "max_neighbors")  # Chroma fixes these when it creates the index


class ChromaConfig(BaseModel):
    """Where a Chroma store is and how it is reached: the configuration :class:`ChromaStore` is built from.

    ``host`` alone selects server mode, and a URL there (``http://host:port``) is split into host, port and ssl.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    mode: ChromaMode = Field(
        "embedded",
        description="'embedded' (on disk, in process), 'memory' (in process, gone on exit) or 'server'. "
        "Setting chroma_host alone selects 'server'.",
    )
    persist_dir: Path = Field(Path("./.twostage/chroma"), description="Directory of the embedded Chroma store.")
    host: str | None = Field(
        None, description="Host of a `chroma run` server; a URL (`http://host:port`) is split into host, port and ssl."
    )
    port: int = Field(8000, ge=1, le=65535, description="Port of the Chroma server.")
    ssl: bool = Field(False, description="Use HTTPS to reach the Chroma server.")
    token: SecretStr | None = Field(None, description="Bearer token for the Chroma server; never printed.")
    timeout_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="Bound on every Chroma server request, in seconds."
    )
    retry: RetryPolicy = Field(
        RetryPolicy(retries=2, backoff_s=0.2),
        description="Retries of a server call that failed in transport (refused, reset, timed out), with backoff; "
        "every retried call is idempotent.",
    )
    distance_space: DistanceSpace = Field("cosine", description="Distance space of newly created collections.")
    hnsw: HnswParameters = Field(HnswParameters(), description="HNSW parameters of the collection.")

    @model_validator(mode="before")
    @classmethod
    def _host_selects_server(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("host"), str) and "://" in data["host"]:
            data = {**data, **split_server_url(data["host"], data)}
        if isinstance(data, dict) and data.get("host") and "mode" not in data:
            data = {**data, "mode": "server"}
        return data

    @model_validator(mode="after")
    def _server_has_host(self) -> ChromaConfig:
        if self.mode == "server" and not self.host:
            raise ValueError("chroma_mode 'server' needs chroma_host (and chroma_port)")
        return self

    @property
    def server_address(self) -> str:
        """``host:port`` of the server, for messages."""
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        """Where the vectors live, for messages and ``twostage info``."""
        if self.mode == "server":
            return f"the Chroma server at {self.server_address}"
        if self.mode == "memory":
            return "the in-memory Chroma store"
        return f"the embedded Chroma store at {str(self.persist_dir)!r}"


def bound_request_timeout(client: ClientAPI, timeout_s: float) -> None:
    """Bound every request of a synchronous ``HttpClient`` to ``timeout_s``.

    chromadb (1.5) builds its ``httpx.Client`` with ``timeout=None`` and offers no setting for it, so there is no
    public route; this is the one place that reaches inside. ``test_store_logic`` fails loudly if the attribute moves.
    """
    client._server._session.timeout = httpx.Timeout(timeout_s)  # type: ignore[attr-defined]


class ChromaStore(Closing):
    """A Chroma collection and the clients that reach it, owned here and released by :meth:`close`.

    Args:
        collection: the collection name (Chroma's naming rules).
        config: where the store is and how it is reached (:class:`ChromaConfig`; by default an embedded store in
            ``./.twostage/chroma``). Keyword arguments are a shorthand for its fields:
            ``ChromaStore("docs", mode="memory")``.
    """

    def __init__(self, collection: str = "twostage", config: ChromaConfig | None = None, **fields: Any) -> None:
        if config is not None and fields:
            raise ConfigurationError(f"give a ChromaConfig or its fields {sorted(fields)}, not both")
        try:
            self.collection_name = check_collection_name(collection)
            self.config = config if config is not None else ChromaConfig(**fields)
        except ValidationError as error:
            raise ConfigurationError(one_line(error)) from None
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        self._redact = Redactor([self.config.token])
        self._retry = self.config.retry if self.mode == "server" else RetryPolicy(retries=0)
        self._client: ClientAPI | None = None
        self._lock = threading.Lock()

    # The configuration, as the store uses it.

    @property
    def mode(self) -> ChromaMode:
        return self.config.mode

    @property
    def persist_dir(self) -> Path:
        return self.config.persist_dir.expanduser()

    @property
    def host(self) -> str | None:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def timeout_s(self) -> float:
        return self.config.timeout_s

    @property
    def hnsw(self) -> HnswParameters:
        return self.config.hnsw

    # Where the store is, for messages.

    @property
    def server_address(self) -> str:
        return self.config.server_address

    @property
    def server_url(self) -> str:
        return f"{'https' if self.config.ssl else 'http'}://{self.server_address}"

    def describe(self) -> str:
        """Where the vectors live, for messages and ``twostage info``."""
        return self.config.describe()

    def __repr__(self) -> str:
        return f"ChromaStore(collection={self.collection_name!r}, {self.describe()})"

    # Clients.

    def _auth_headers(self) -> dict[str, str]:
        token = self.config.token
        return {} if token is None else {"Authorization": f"Bearer {token.get_secret_value()}"}

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
        token = "the chroma_token given" if self.config.token is not None else "no chroma_token"
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
                ssl=self.config.ssl,
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
                self._redact.watch(self)
                self._client = self._create_client()
            return self._client

    @property
    def is_open(self) -> bool:
        """Whether a client is held (one is created on first use, and again after :meth:`close`)."""
        return self._client is not None

    def close(self) -> None:
        """Release the client (an embedded store's files, a server's connections). The store can be reopened.

        The in-memory store lives for the process, as documented for ``memory`` mode: closing one handle on it keeps
        its data (chromadb would discard it with the last client).
        """
        with self._lock:
            client, self._client = self._client, None
        self._redact.unwatch()
        if client is not None and self.mode != "memory":
            client.close()
        if client is not None and self.mode == "embedded":
            EmbeddedStoreLock.release(self.persist_dir)

    # Faults: timeouts and retries.

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
        except httpx.TransportError as error:
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

    def with_retries(self, operation: Callable[[], T]) -> T:
        """Run an idempotent operation; retry server transport failures as the retry policy says.

        Only reads, and upserts and deletes of deterministic ids, come here, so repeating one whose request did reach
        the server changes nothing. Only a server is worth retrying: an in-process store that failed once fails the
        same way again. The last failure is a :class:`ChromaUnavailableError`.
        """

        def attempt() -> T:
            with self.server_errors():
                return operation()

        return self._retry.run(attempt, retried=ChromaUnavailableError, logger=logger, what="Chroma call")

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
