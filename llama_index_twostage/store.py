"""Chroma, in the mode the settings ask for, and the contract a collection keeps with its embedding model.

A collection records, on creation, which embedding model wrote it, the vectors' dimension and the distance space.
Opening it with another model or dimension fails loudly instead of returning nonsense neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from llama_index_twostage.errors import (
    ChromaUnavailableError,
    CollectionMismatchError,
    CollectionNotFoundError,
)
from llama_index_twostage.settings import DistanceSpace, RetrieverSettings

if TYPE_CHECKING:
    from chromadb.api import AsyncClientAPI, ClientAPI
    from chromadb.api.models.AsyncCollection import AsyncCollection
    from chromadb.api.models.Collection import Collection

logger = logging.getLogger(__name__)

MODEL_KEY = "twostage:embed_model"
DIMENSION_KEY = "twostage:dimension"

_clients: dict[tuple[Any, ...], ClientAPI] = {}
_clients_lock = threading.Lock()
_async_clients: dict[tuple[Any, ...], AsyncClientAPI] = {}

T = TypeVar("T")


def model_identity(model: str) -> str:
    """What the contract compares: the model's name without its org or directory.

    A local copy of a hub model (``./models/all-MiniLM-L6-v2``) then matches its hub id
    (``sentence-transformers/all-MiniLM-L6-v2``); the dimension check guards the rest.
    """
    return model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class CollectionContract:
    """Which embedding model wrote a collection, the vectors' dimension and the distance space."""

    embed_model: str
    dimension: int
    space: DistanceSpace = "cosine"

    def to_metadata(self) -> dict[str, Any]:
        return {MODEL_KEY: self.embed_model, DIMENSION_KEY: self.dimension}

    @classmethod
    def of(cls, collection: Collection) -> CollectionContract | None:
        """The contract a collection recorded, or None when another tool (e.g. ChromaVectorStore) created it."""
        metadata = collection.metadata or {}
        if MODEL_KEY not in metadata:
            return None
        return cls(str(metadata[MODEL_KEY]), int(metadata[DIMENSION_KEY]), distance_space(collection))

    def check(self, expected_model: str, expected_dimension: int, collection_name: str) -> None:
        """Raise :class:`CollectionMismatchError` naming both sides when the query side differs from the writer."""
        if model_identity(self.embed_model) != model_identity(expected_model):
            raise CollectionMismatchError(
                f"collection {collection_name!r} was written with embedding model {self.embed_model!r}, "
                f"but the settings use {expected_model!r}: set embed_model to {self.embed_model!r} or ingest "
                "into a new collection"
            )
        if self.dimension != expected_dimension:
            raise CollectionMismatchError(
                f"collection {collection_name!r} holds {self.dimension}-dimensional vectors, but "
                f"{expected_model!r} produces {expected_dimension}: use the model that wrote it or a new collection"
            )


def distance_space(collection: Collection) -> DistanceSpace:
    """The distance space Chroma uses for this collection (``l2`` when it was created without one)."""
    configuration = collection.configuration or {}
    index = configuration.get("hnsw") or configuration.get("spann") or {}
    space = index.get("space") or (collection.metadata or {}).get("hnsw:space") or "l2"
    return space  # type: ignore[no-any-return]


def distance_to_similarity(distance: float, space: DistanceSpace) -> float:
    """The one place that turns a Chroma distance into a cosine similarity.

    Chroma returns ``1 - cos`` for ``cosine``, ``1 - dot`` for ``ip`` and the *squared* Euclidean distance for
    ``l2``. For unit vectors (what the bi-encoders here produce) all three give the cosine exactly:
    ``||a - b||^2 = 2 - 2 cos``.
    """
    if space == "l2":
        return 1.0 - distance / 2.0
    return 1.0 - distance


def _server_url(settings: RetrieverSettings) -> str:
    scheme = "https" if settings.chroma_ssl else "http"
    return f"{scheme}://{settings.chroma_host}:{settings.chroma_port}"


def auth_headers(settings: RetrieverSettings) -> dict[str, str]:
    if settings.chroma_token is None:
        return {}
    return {"Authorization": f"Bearer {settings.chroma_token.get_secret_value()}"}


def check_server(settings: RetrieverSettings) -> None:
    """Probe the server's heartbeat within ``chroma_timeout_s``, so an absent server fails fast and clearly.

    Chroma's own HTTP client waits without a time limit; this is why the probe comes first.
    """
    url = f"{_server_url(settings)}/api/v2/heartbeat"
    try:
        response = httpx.get(url, timeout=settings.chroma_timeout_s, headers=auth_headers(settings))
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise ChromaUnavailableError(
            f"Chroma server at {settings.server_address} is unreachable ({type(error).__name__}: {error}) "
            f"within {settings.chroma_timeout_s:g}s: start it with `chroma run --host {settings.chroma_host} "
            f"--port {settings.chroma_port}` or fix chroma_host/chroma_port"
        ) from None


def _client_key(settings: RetrieverSettings) -> tuple[Any, ...]:
    if settings.chroma_mode == "server":
        token = settings.chroma_token.get_secret_value() if settings.chroma_token else None
        return ("server", settings.chroma_host, settings.chroma_port, settings.chroma_ssl, token)
    if settings.chroma_mode == "memory":
        return ("memory",)
    return ("embedded", str(Path(settings.persist_dir).expanduser().resolve()))


def _create_client(settings: RetrieverSettings) -> ClientAPI:
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from chromadb.errors import ChromaError

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if settings.chroma_mode == "memory":
        return chromadb.EphemeralClient(settings=chroma_settings)
    if settings.chroma_mode == "embedded":
        persist_dir = Path(settings.persist_dir).expanduser()
        try:
            persist_dir.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(persist_dir), settings=chroma_settings)
        except (OSError, RuntimeError, ChromaError) as error:  # ChromaError: e.g. a corrupt chroma.sqlite3
            raise ChromaUnavailableError(
                f"cannot open the embedded Chroma store at {str(persist_dir)!r}: {error}; "
                "check persist_dir is a writable directory holding a Chroma store (or none yet)"
            ) from error
    check_server(settings)
    client = chromadb.HttpClient(
        host=settings.chroma_host or "localhost",
        port=settings.chroma_port,
        ssl=settings.chroma_ssl,
        headers=auth_headers(settings),
        settings=chroma_settings,
    )
    # Bound every later request too (see check_server); Chroma exposes no setting for it.
    client._server._session.timeout = httpx.Timeout(settings.chroma_timeout_s)  # type: ignore[attr-defined]
    return client


def get_client(settings: RetrieverSettings) -> ClientAPI:
    """The Chroma client for these settings, one per store and process (embedded Chroma allows no second one)."""
    key = _client_key(settings)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _create_client(settings)
        return _clients[key]


def verify_collection(collection: Collection, embed_model: str, dimension: int) -> None:
    """Check a collection against the model about to read or write it.

    Collections created by other tools (LlamaIndex's ``ChromaVectorStore``) record no model: their dimension is
    checked on a stored vector, and the model cannot be.
    """
    recorded = CollectionContract.of(collection)
    if recorded is not None:
        recorded.check(embed_model, dimension, collection.name)
        return
    sample = collection.peek(limit=1).get("embeddings")
    if sample is not None and len(sample) and len(sample[0]) != dimension:
        CollectionContract(embed_model, len(sample[0])).check(embed_model, dimension, collection.name)


async def _async_client(settings: RetrieverSettings) -> AsyncClientAPI:
    """One async client per server and process.

    Many queries may arrive here at once before the first client exists: each may build one, the first stored
    wins and every caller uses it (no lock, which would bind to one event loop).
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    key = _client_key(settings)
    client = _async_clients.get(key)
    if client is None:
        await asyncio.to_thread(check_server, settings)
        created = chromadb.AsyncHttpClient(
            host=settings.chroma_host or "localhost",
            port=settings.chroma_port,
            ssl=settings.chroma_ssl,
            headers=auth_headers(settings),
            settings=ChromaSettings(anonymized_telemetry=False),
        )
        client = _async_clients.setdefault(key, await bounded(created, settings))
    return client


async def open_async_collection(settings: RetrieverSettings) -> AsyncCollection:
    """The collection through Chroma's async HTTP client (server mode)."""
    client = await _async_client(settings)
    return await bounded(client.get_collection(settings.collection), settings)


async def bounded(call: Awaitable[T], settings: RetrieverSettings) -> T:
    """Await a Chroma server call within ``chroma_timeout_s`` (the async client has no timeout of its own)."""
    return await asyncio.wait_for(call, settings.chroma_timeout_s)


@contextmanager
def server_errors(settings: RetrieverSettings) -> Iterator[None]:
    """Turn transport failures of the Chroma server into one clear :class:`ChromaUnavailableError`."""
    try:
        yield
    except (httpx.TransportError, asyncio.TimeoutError) as error:
        raise ChromaUnavailableError(
            f"lost the Chroma server at {settings.server_address} ({type(error).__name__}: {error}) within "
            f"{settings.chroma_timeout_s:g}s: check that `chroma run` is up, then retry"
        ) from error


def _attempts(settings: RetrieverSettings) -> int:
    """Only a server is worth retrying: an in-process store that failed once fails the same way again."""
    return settings.chroma_retries + 1 if settings.chroma_mode == "server" else 1


def _retry_delay(settings: RetrieverSettings, failed_attempt: int, error: Exception) -> float:
    """The exponential backoff before the next attempt, logged so that a flapping server shows in the logs."""
    delay = settings.chroma_retry_backoff_s * 2 ** (failed_attempt - 1)
    logger.warning(
        "Chroma call failed (attempt %d of %d), retrying in %.2fs: %s",
        failed_attempt,
        _attempts(settings),
        delay,
        error,
    )
    return delay


def with_retries(operation: Callable[[], T], settings: RetrieverSettings) -> T:
    """Run a Chroma operation; retry server transport failures ``chroma_retries`` times with exponential backoff.

    Only idempotent operations come here (reads, and upserts and deletes of deterministic ids), so repeating
    one whose request did reach the server changes nothing. The last failure is a :class:`ChromaUnavailableError`.
    """
    for attempt in range(1, _attempts(settings)):
        try:
            with server_errors(settings):
                return operation()
        except ChromaUnavailableError as error:
            time.sleep(_retry_delay(settings, attempt, error))
    with server_errors(settings):
        return operation()


async def awith_retries(operation: Callable[[], Awaitable[T]], settings: RetrieverSettings) -> T:
    """:func:`with_retries` for coroutines: the backoff awaits, so the event loop keeps serving other queries."""
    for attempt in range(1, _attempts(settings)):
        try:
            with server_errors(settings):
                return await operation()
        except ChromaUnavailableError as error:
            await asyncio.sleep(_retry_delay(settings, attempt, error))
    with server_errors(settings):
        return await operation()


def create_or_open_collection(settings: RetrieverSettings, contract: CollectionContract) -> Collection:
    """The collection to write into: created with ``contract`` recorded, or opened and checked against it."""
    from chromadb.errors import InternalError

    client = get_client(settings)
    try:
        collection = open_collection(settings)
    except CollectionNotFoundError:
        try:
            return client.create_collection(
                settings.collection,
                metadata=contract.to_metadata(),
                configuration={"hnsw": {"space": contract.space, **hnsw_configuration(settings)}},
                embedding_function=None,
            )
        except InternalError:  # created concurrently by another writer: open it below
            collection = open_collection(settings)
    verify_collection(collection, contract.embed_model, contract.dimension)
    _update_hnsw(collection, settings)
    return collection


_HNSW_SETTINGS = {
    "ef_search": "hnsw_ef_search",
    "ef_construction": "hnsw_ef_construction",
    "max_neighbors": "hnsw_max_neighbors",
}
_BUILD_ONLY = ("ef_construction", "max_neighbors")  # Chroma fixes these when it creates the index


def hnsw_configuration(settings: RetrieverSettings) -> dict[str, int]:
    """The HNSW parameters the settings give (Chroma's defaults stand for the unset ones)."""
    values = {key: getattr(settings, name) for key, name in _HNSW_SETTINGS.items()}
    return {key: value for key, value in values.items() if value is not None}


def _update_hnsw(collection: Collection, settings: RetrieverSettings) -> None:
    """Record a new ``ef_search`` on an existing collection; say so when build parameters differ (they cannot)."""
    current = (collection.configuration or {}).get("hnsw", {})
    wanted = hnsw_configuration(settings)
    if "ef_search" in wanted and current.get("ef_search") != wanted["ef_search"]:
        # Recorded in the collection; a process that already loaded its index keeps the old breadth until reopened,
        # which is why a new collection gets its breadth at creation.
        collection.modify(configuration={"hnsw": {"ef_search": wanted["ef_search"]}})
    for key in _BUILD_ONLY:
        if key in wanted and current.get(key) != wanted[key]:
            logger.warning(
                "collection %r was built with %s=%s; %s=%s applies only to new collections: ingest into a new "
                "collection to rebuild the index with it",
                collection.name,
                key,
                current.get(key),
                _HNSW_SETTINGS[key],
                wanted[key],
            )


def open_collection(settings: RetrieverSettings) -> Collection:
    """An existing collection to read from; a missing one is an error that names it and what exists.

    Reading never creates an embedded store: a mistyped ``persist_dir`` is named instead of silently becoming
    a new, empty directory.
    """
    from chromadb.errors import NotFoundError

    if settings.chroma_mode == "embedded" and not Path(settings.persist_dir).expanduser().is_dir():
        raise CollectionNotFoundError(
            f"collection {settings.collection!r} does not exist: there is no embedded Chroma store at "
            f"{str(settings.persist_dir)!r}; ingest documents first (`twostage ingest PATH`) or fix persist_dir"
        )
    client = get_client(settings)
    try:
        return client.get_collection(settings.collection, embedding_function=None)
    except NotFoundError as error:
        existing = sorted(c.name for c in client.list_collections())
        raise CollectionNotFoundError(
            f"collection {settings.collection!r} does not exist in {describe_store(settings)} "
            f"(existing: {existing or 'none'}): ingest documents first (`twostage ingest PATH`) or fix 'collection'"
        ) from error


def describe_store(settings: RetrieverSettings) -> str:
    """Where the vectors live, for messages and ``twostage info``."""
    if settings.chroma_mode == "server":
        return f"the Chroma server at {settings.server_address}"
    if settings.chroma_mode == "memory":
        return "the in-memory Chroma store"
    return f"the embedded Chroma store at {str(settings.persist_dir)!r}"
