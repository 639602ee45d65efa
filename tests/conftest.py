"""Shared fixtures: paths to the real models and data beside the repo, a SciFact subset embedded once per
session, a settings factory, a pipeline on a real `chroma run` server and a real Infinity rerank server. The test
doubles and helpers they use live in ``support.py``; the server processes in ``servers.py``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from servers import LocalChromaServer, LocalInfinityServer, LocalServer
from support import (
    EMBED_DIR,
    HASH_MODEL,
    INFINITY,
    INFINITY_KEY,
    RERANK_DIR,
    HashEmbedding,
    assert_same_ranking,
    require,
    scifact_subset,
)

from llama_index_twostage.models import ModelPool
from llama_index_twostage.pipeline import TwoStagePipeline
from llama_index_twostage.settings import RetrieverSettings

ServerT = TypeVar("ServerT", bound=LocalServer)


def unique_name(prefix: str = "t") -> str:
    """A fresh collection name (the in-memory Chroma client is one per process)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def embed_model_dir() -> str:
    return str(require(EMBED_DIR))


@pytest.fixture(scope="session")
def rerank_model_dir() -> str:
    return str(require(RERANK_DIR))


@pytest.fixture(scope="session")
def scifact():
    return scifact_subset()


@pytest.fixture(scope="session")
def settings_for(
    tmp_path_factory: pytest.TempPathFactory, embed_model_dir: str, rerank_model_dir: str
) -> Callable[..., RetrieverSettings]:
    """``settings_for(mode, collection, **overrides)``: test settings on the local models, no progress bars."""
    default_persist = tmp_path_factory.mktemp("chroma-embedded")

    def make(mode: str = "embedded", collection: str | None = None, **overrides: Any) -> RetrieverSettings:
        fields: dict[str, Any] = {
            "collection": collection or unique_name(),
            "chroma_mode": mode,
            "persist_dir": default_persist,
            "embed_model": embed_model_dir,
            "rerank_model": rerank_model_dir,
            # Parity with fp32 CrossEncoder.predict is asserted throughout; 'auto' has tests of its own.
            "rerank_backend": "torch",
            "embed_backend": "torch",  # the fp32 vectors the reference scores were measured on; 'auto': own tests
            "recall_k": 20,
            "top_k": 5,
            "show_progress": False,
        }
        fields.update(overrides)
        return RetrieverSettings(**fields)

    return make


@pytest.fixture(scope="session")
def models() -> Iterator[ModelPool]:
    """One pool for the session: each real model is loaded once, shared explicitly by every pipeline built here."""
    pool = ModelPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def pipeline_for(models: ModelPool) -> Iterator[Callable[..., TwoStagePipeline]]:
    """``pipeline_for(settings, **kwargs)``: a ``TwoStagePipeline`` on the session's models, closed at the end."""
    built: list[TwoStagePipeline] = []

    def make(settings: RetrieverSettings, **kwargs: Any) -> TwoStagePipeline:
        built.append(TwoStagePipeline(settings, models=models, **kwargs))
        return built[-1]

    yield make
    for pipeline in built:
        pipeline.close()


@dataclass(frozen=True)
class Ingested:
    settings: RetrieverSettings
    report: Any
    dataset: Any
    pipeline: TwoStagePipeline


@pytest.fixture(scope="session")
def ingested(settings_for, scifact, pipeline_for) -> Ingested:
    """The SciFact subset embedded once into an embedded (on-disk) collection, shared read-only by many tests."""
    settings = settings_for("embedded", "scifact-subset")
    pipeline = pipeline_for(settings)
    report = pipeline.ingest(list(scifact.corpus.values()))
    return Ingested(settings, report, scifact, pipeline)


def _started(server: ServerT, timeout_s: float = 60.0) -> ServerT:
    try:
        server.start(timeout_s)
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    return server


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real ``chroma run`` on loopback; yields (host, port)."""
    server = _started(LocalChromaServer(tmp_path_factory.mktemp("chroma-server") / "data"))
    try:
        yield server.host, server.port
    finally:
        server.stop()


@pytest.fixture(scope="session")
def subset_ids(scifact) -> list[str]:
    """The relevant documents of the first queries plus some others: small enough to embed again quickly."""
    relevant = [doc_id for qid in list(scifact.qrels)[:4] for doc_id in scifact.qrels[qid]]
    others = [doc_id for doc_id in scifact.corpus if doc_id not in relevant][:20]
    return relevant + others


@pytest.fixture(scope="session")
def server_pipeline(chroma_server, settings_for, pipeline_for, scifact, subset_ids) -> TwoStagePipeline:
    """A pipeline on the session's `chroma run`: the ``subset_ids`` documents ingested once, real models
    (recall_k=12, top_k=4). Tests that need other settings build a pipeline on its store and models."""
    host, port = chroma_server
    pipeline = pipeline_for(settings_for("server", chroma_host=host, chroma_port=port, recall_k=12, top_k=4))
    report = pipeline.ingest([scifact.corpus[doc_id] for doc_id in subset_ids])
    assert report.documents == len(subset_ids) and report.added == report.stored_total == report.chunks
    return pipeline


@pytest.fixture
def restartable_server(tmp_path: Path) -> Iterator[LocalChromaServer]:
    """A ``chroma run`` of this test alone, to kill, pause and restart on the same port and data directory."""
    server = _started(LocalChromaServer(tmp_path / "chroma-data"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def infinity_server(tmp_path_factory: pytest.TempPathFactory, rerank_model_dir: str) -> Iterator[LocalInfinityServer]:
    """A real Infinity rerank server serving the test reranker as 'reranker', requiring ``INFINITY_KEY``; started
    once (about 15 s on 2 cores), stopped by its process group. A test that kills it restarts it."""
    logs = tmp_path_factory.mktemp("infinity")
    server = LocalInfinityServer(INFINITY, Path(rerank_model_dir), logs, api_key=INFINITY_KEY)
    _started(server, timeout_s=300)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hash_embedding() -> HashEmbedding:
    return HashEmbedding()


@pytest.fixture(scope="session")
def cheap_settings(settings_for) -> Callable[..., RetrieverSettings]:
    """``settings_for`` on the hash embedding's name (pass ``embed_model=HashEmbedding()`` to the library)."""

    def make(mode: str = "memory", collection: str | None = None, **overrides: Any) -> RetrieverSettings:
        return settings_for(mode, collection, embed_model=HASH_MODEL, **overrides)

    return make


@pytest.fixture(autouse=True)
def _no_ambient_twostage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own TWOSTAGE_* variables must not leak into the tests."""
    import os

    for name in list(os.environ):
        if name.startswith("TWOSTAGE_"):
            monkeypatch.delenv(name)
    # The bi-encoder runs fp32 in every test, CLI and subprocess ones included (the reference scores were measured
    # on fp32 vectors, and 'auto' would calibrate in each fresh model cache); embed_backend has tests of its own.
    monkeypatch.setenv("TWOSTAGE_EMBED_BACKEND", "torch")


@pytest.fixture
def twostage_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``twostage_env(persist_dir=..., collection=...)``: ``TWOSTAGE_*`` variables for this test, as a CLI user
    sets them (no progress bars)."""

    def set_variables(**values: Any) -> None:
        for name, value in {"show_progress": "false", **values}.items():
            monkeypatch.setenv(f"TWOSTAGE_{name.upper()}", str(value))

    return set_variables


@pytest.fixture(scope="session")
def some_queries(scifact) -> list[str]:
    """A few SciFact test queries (each has a relevant document in the subset)."""
    return [scifact.queries[qid] for qid in list(scifact.queries)[:4]]


@pytest.fixture(scope="session")
def same_ranking() -> Callable[..., None]:
    return assert_same_ranking


# `scripts/test.sh --quick`, the loop before each commit, leaves out the tests that need one of these: the SciFact
# subset embedded, a real server process, or a built wheel. CI runs everything.
FULL_SUITE_FIXTURES = frozenset(
    {"ingested", "chroma_server", "restartable_server", "infinity_server", "second_infinity_server", "venv_bin"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if FULL_SUITE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.full_suite)
