"""Faults against a real `chroma run`: killed mid-query and mid-ingestion, hung, restarted; and embedded stores
that cannot be used. Each ends in a clear error within a bounded time (pytest-timeout, not timing asserts) and
recovers without rebuilding anything once the server is back."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from llama_index.core import Document

from llama_index_twostage.errors import ChromaUnavailableError, CollectionNotFoundError
from llama_index_twostage.pipeline import ingest_documents, verify_collection_integrity
from llama_index_twostage.store import ChromaStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPICS = ["volcanoes", "insulin", "tides", "bread", "jupiter", "cats", "glaciers", "vaccines", "bees", "comets"]


def documents(n: int = 10) -> list[Document]:
    return [
        Document(id_=f"doc-{i}", text=f"A note on {TOPICS[i % len(TOPICS)]}, number {i}.", metadata={"n": i})
        for i in range(n)
    ]


@pytest.fixture
def restartable_settings(restartable_server, cheap_settings):
    """``restartable_settings(**overrides)``: settings for the test's own server, with fast retries."""

    def make(**overrides):
        address = {"chroma_host": restartable_server.host, "chroma_port": restartable_server.port}
        return cheap_settings("server", **address, chroma_timeout_s=2, chroma_retry_backoff_s=0.1, **overrides)

    return make


@pytest.fixture
def small_collection(restartable_settings, hash_embedding):
    """Settings of a small collection already ingested on the test's own server."""
    settings = restartable_settings(recall_k=5)
    ingest_documents(documents(), settings, embed_model=hash_embedding)
    return settings


@pytest.fixture
def retriever_for(pipeline_for, hash_embedding):
    """``retriever_for(settings, **kwargs)``: stage 1 on the hash embedding, from a pipeline of its own."""
    return lambda settings, **kwargs: pipeline_for(settings, embed_model=hash_embedding).retriever(**kwargs)


def ids(nodes) -> list[str]:
    return [scored.node.node_id for scored in nodes]


def query_until_failure(retriever, expected: list[str], answered: threading.Event, failed: threading.Event) -> list:
    """Query in a loop until one query fails; every answer before must be the right one (``answered`` is set after
    the first)."""
    outcomes = []
    while not failed.is_set():
        try:
            assert ids(retriever.retrieve("bees")) == expected
            outcomes.append("ok")
            answered.set()
        except ChromaUnavailableError as error:
            assert "chroma run" in str(error)
            failed.set()
            outcomes.append("unavailable")
    return outcomes


def test_server_killed_mid_query_fails_clearly_then_recovers(small_collection, restartable_server, retriever_for):
    retriever = retriever_for(small_collection)
    expected = ids(retriever.retrieve("bees"))
    answered, failed = threading.Event(), threading.Event()
    with ThreadPoolExecutor(4) as pool:
        loops = [pool.submit(query_until_failure, retriever, expected, answered, failed) for _ in range(4)]
        assert answered.wait(timeout=60)  # the loops are querying: now the crash lands mid-query
        restartable_server.kill()
        outcomes = [outcome for loop in loops for outcome in loop.result()]
    assert "ok" in outcomes and "unavailable" in outcomes
    restartable_server.start()
    assert ids(retriever.retrieve("bees")) == expected  # the same retriever, no rebuild


async def test_server_killed_mid_async_queries_fails_clearly_then_recovers(
    retriever_for, small_collection, restartable_server, hash_embedding
):
    retriever = retriever_for(small_collection)
    expected = ids(await retriever.aretrieve("bees"))

    async def one_query() -> str:
        try:
            assert ids(await retriever.aretrieve("bees")) == expected
            return "ok"
        except ChromaUnavailableError:
            return "unavailable"

    queries = [asyncio.create_task(one_query()) for _ in range(32)]
    await asyncio.sleep(0)
    await asyncio.to_thread(restartable_server.kill)
    outcomes = await asyncio.gather(*queries, *(one_query() for _ in range(4)))
    assert outcomes[-4:] == ["unavailable"] * 4  # everything after the kill
    await asyncio.to_thread(restartable_server.start)
    assert ids(await retriever.aretrieve("bees")) == expected


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_hung_server_times_out_then_recovers(small_collection, restartable_server, retriever_for, asynchronous):
    settings = small_collection.model_copy(update={"chroma_timeout_s": 1.0, "chroma_retries": 1})
    retriever = retriever_for(settings)
    expected = ids(await retriever.aretrieve("bees") if asynchronous else retriever.retrieve("bees"))
    restartable_server.pause()
    try:
        with pytest.raises(ChromaUnavailableError, match="within 1s"):
            await retriever.aretrieve("bees") if asynchronous else retriever.retrieve("bees")
    finally:
        restartable_server.resume()
    assert ids(await retriever.aretrieve("bees") if asynchronous else retriever.retrieve("bees")) == expected


class RetryWatch(logging.Handler):
    """Sets ``seen`` when the store logs that it is retrying a failed call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.seen.set()


def test_retries_ride_out_a_short_outage(small_collection, restartable_server, retriever_for):
    settings = small_collection.model_copy(update={"chroma_retries": 8, "chroma_retry_backoff_s": 0.2})
    retriever = retriever_for(settings)
    expected = ids(retriever.retrieve("bees"))
    restartable_server.kill()
    retried = RetryWatch()
    logging.getLogger("llama_index_twostage.store.chroma").addHandler(retried)

    def restart_once_retrying() -> None:
        retried.seen.wait(60)
        restartable_server.start()

    restarting = threading.Thread(target=restart_once_retrying)
    restarting.start()
    try:
        assert ids(retriever.retrieve("bees")) == expected  # retried until the server was back
    finally:
        retried.seen.set()
        restarting.join()
        logging.getLogger("llama_index_twostage.store.chroma").removeHandler(retried)


def test_no_retries_fail_on_the_first_error(small_collection, restartable_server, retriever_for, caplog):
    retriever = retriever_for(small_collection.model_copy(update={"chroma_retries": 0}))
    retriever.retrieve("bees")
    restartable_server.kill()
    with pytest.raises(ChromaUnavailableError):
        retriever.retrieve("bees")
    assert "retrying" not in caplog.text


@pytest.mark.timeout(30)
def test_two_stores_on_one_server_keep_their_own_timeouts(small_collection, restartable_server, retriever_for):
    """A second store on the same server with a shorter timeout used to get the first one's client: asked for
    0.5 s against a hung server, it waited the first one's timeout (here 60 s, past this test's 30 s limit)."""
    patient = retriever_for(small_collection.model_copy(update={"chroma_timeout_s": 60.0, "chroma_retries": 0}))
    impatient = retriever_for(small_collection.model_copy(update={"chroma_timeout_s": 0.5, "chroma_retries": 0}))
    expected = ids(patient.retrieve("bees"))
    assert ids(impatient.retrieve("bees")) == expected
    # chromadb offers no timeout setting; the store bounds its client's session (see bound_request_timeout).
    assert impatient.store.client._server._session.timeout == httpx.Timeout(0.5)
    assert patient.store.client._server._session.timeout == httpx.Timeout(60.0)
    restartable_server.pause()
    try:
        with pytest.raises(ChromaUnavailableError, match="within 0.5s"):
            impatient.retrieve("bees")
    finally:
        restartable_server.resume()
    assert ids(patient.retrieve("bees")) == expected


class KillingEmbedding:
    """Wraps the hash embedding: kills the server when it embeds its third batch, i.e. mid-ingestion."""

    def __init__(self, embedding, server) -> None:
        self.embedding, self.server, self.batches = embedding, server, 0

    def __getattr__(self, name):
        return getattr(self.embedding, name)

    def get_text_embedding_batch(self, texts, **kwargs):
        self.batches += 1
        if self.batches == 3:
            self.server.kill()
        return self.embedding.get_text_embedding_batch(texts, **kwargs)


def stored_ids(settings) -> list[str]:
    with ChromaStore(settings.collection, settings.chroma) as store:
        return sorted(store.open_collection().get(include=[])["ids"])


def test_server_killed_mid_ingestion_rerun_completes_exactly(restartable_server, restartable_settings, hash_embedding):
    settings = restartable_settings(upsert_batch_size=4, embed_batch_size=4)
    corpus = documents(30)
    with pytest.raises(ChromaUnavailableError):
        ingest_documents(corpus, settings, embed_model=KillingEmbedding(hash_embedding, restartable_server))
    restartable_server.start()
    partial = stored_ids(settings)
    assert 0 < len(partial) < len(corpus)
    rerun = ingest_documents(corpus, settings, embed_model=hash_embedding)
    assert rerun.already_stored == len(partial) and rerun.added == len(corpus) - len(partial)
    clean = settings.model_copy(update={"collection": settings.collection + "-clean"})
    ingest_documents(corpus, clean, embed_model=hash_embedding)
    assert stored_ids(settings) == stored_ids(clean)  # nothing lost, nothing duplicated
    assert verify_collection_integrity(settings).ok


@pytest.mark.parametrize("shutdown", ["stop", "kill"])
def test_data_persists_across_restarts(small_collection, restartable_server, retriever_for, shutdown):
    retriever = retriever_for(small_collection)
    before = (stored_ids(small_collection), ids(retriever.retrieve("tides")))
    getattr(restartable_server, shutdown)()
    restartable_server.start()
    assert (stored_ids(small_collection), ids(retriever.retrieve("tides"))) == before
    assert verify_collection_integrity(small_collection).ok


# --- embedded stores that cannot be used ------------------------------------------------------------------------
# Tests run as root, for whom chmod does not block writes; a path *under a regular file* fails for everyone
# (ENOTDIR), which is what a mistyped or read-only location looks like to Chroma.


@pytest.fixture
def under_a_file(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    return tmp_path / "afile" / "chroma"


def test_unwritable_persist_dir_fails_ingestion_clearly(cheap_settings, under_a_file, hash_embedding):
    settings = cheap_settings("embedded", persist_dir=under_a_file)
    with pytest.raises(ChromaUnavailableError, match="cannot open the embedded Chroma store at .*afile/chroma"):
        ingest_documents(documents(2), settings, embed_model=hash_embedding)


def test_unusable_persist_dir_fails_queries_clearly(cheap_settings, under_a_file, tmp_path, retriever_for):
    for persist_dir in (under_a_file, tmp_path / "missing"):
        settings = cheap_settings("embedded", persist_dir=persist_dir)
        retriever = retriever_for(settings)
        with pytest.raises(CollectionNotFoundError, match="no embedded Chroma store at .*fix persist_dir"):
            retriever.retrieve("bees")
    assert not (tmp_path / "missing").exists()  # reading never creates a store


def test_corrupt_store_fails_clearly(cheap_settings, tmp_path, hash_embedding):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "chroma.sqlite3").write_bytes(b"\x00garbage" * 2000)
    settings = cheap_settings("embedded", persist_dir=tmp_path / "store")
    with pytest.raises(ChromaUnavailableError, match="file is not a database"):
        ingest_documents(documents(2), settings, embed_model=hash_embedding)


# --- the token never leaks: not in logs (DEBUG, every library), errors or reprs, whatever happens ---------------

SECRET = "tok-4d2e-never-print-me"


def test_token_never_logged_or_in_errors(
    retriever_for, restartable_server, restartable_settings, hash_embedding, caplog
):
    settings = restartable_settings(chroma_token=SECRET)
    retriever = retriever_for(settings)
    with caplog.at_level("DEBUG"):
        ingest_documents(documents(3), settings, embed_model=hash_embedding)
        texts = [repr(node) for node in retriever.retrieve("bees")]
        restartable_server.kill()
        with pytest.raises(ChromaUnavailableError) as failure:
            retriever.retrieve("bees")
    assert caplog.records  # DEBUG logging did run (httpx, chromadb, ours)
    for text in (caplog.text, str(failure.value), repr(failure.value.__cause__), repr(retriever), *texts):
        assert SECRET not in text
