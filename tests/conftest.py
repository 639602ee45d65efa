"""Shared fixtures: paths to the real models and data beside the repo, a SciFact subset embedded once per
session, a settings factory, a real `chroma run` server and a real Infinity rerank server."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import torch
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from llama_index_twostage.models import ModelPool
from llama_index_twostage.pipeline import TwoStagePipeline
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.testing import LocalChromaServer, LocalInfinityServer, LocalServer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EMBED_DIR = SHARED / "models" / "all-MiniLM-L6-v2"
RERANK_DIR = SHARED / "models" / "twostage-test-reranker"
SCIFACT_DIR = SHARED / "data" / "scifact"
INFINITY = REPO / ".venv-infinity" / "bin" / "infinity_emb"  # scripts/setup_infinity.sh creates it
INFINITY_KEY = "sk-infinity-test-5f2c9e"

ServerT = TypeVar("ServerT", bound=LocalServer)

N_QUERIES = 30
N_OTHER_DOCS = 100  # ~185 ms per chunk on 2 cores: 130 docs embed in ~25 s


def _require(path: Path) -> Path:
    # Integration tests must fail, not skip, without ../shared: a silently skipped suite proves nothing.
    if not path.exists():
        pytest.fail(
            f"{path} is missing: integration tests need the shared models and data in {SHARED} "
            "(a 'shared' folder beside the repository checkout)",
            pytrace=False,
        )
    return path


def unique_name(prefix: str = "t") -> str:
    """A fresh collection name (the in-memory Chroma client is one per process)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def embed_model_dir() -> str:
    return str(_require(EMBED_DIR))


@pytest.fixture(scope="session")
def rerank_model_dir() -> str:
    return str(_require(RERANK_DIR))


def scifact_subset(**load: Any) -> Any:
    """The first 30 judged SciFact test queries; corpus = their relevant docs plus 100 others (file order)."""
    from llama_index_twostage.evaluation.datasets import load_beir

    full = load_beir(_require(SCIFACT_DIR), **load).limit(N_QUERIES)
    relevant = {doc_id for judgments in full.qrels.values() for doc_id in judgments}
    others = [doc_id for doc_id in full.corpus if doc_id not in relevant][:N_OTHER_DOCS]
    keep = [doc_id for doc_id in full.corpus if doc_id in relevant] + others
    return replace(full, corpus={doc_id: full.corpus[doc_id] for doc_id in keep})


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


HASH_MODEL = "test/hash-embedding"  # a hub-style name: settings accept it without a directory


class HashEmbedding(BaseEmbedding):
    """A cheap deterministic embedding (a normalised SHA-256 of the text) that counts what it embeds.

    For properties that do not depend on meaning: ingestion bookkeeping, fuzzed input, retries.
    """

    model_name: str = HASH_MODEL
    _embedded: list[str] = PrivateAttr(default_factory=list)

    @property
    def embedded(self) -> list[str]:
        return self._embedded

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        values = [byte - 127.5 for byte in digest]
        norm = math.sqrt(sum(value * value for value in values))
        return [value / norm for value in values]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        """The batch path ingestion takes: recorded (a single text is a probe, e.g. of the dimension)."""
        self._embedded.extend(texts)
        return [self._vector(text) for text in texts]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


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
    return _assert_same_ranking


def _assert_same_ranking(got_ids: list[str], expected_ids: list[str], scores: dict[str, float], tol: float) -> None:
    """Same order, except that ids whose reference scores differ by less than ``tol`` may swap."""
    assert len(got_ids) == len(expected_ids)
    for position, (got, expected) in enumerate(zip(got_ids, expected_ids)):
        if got != expected:
            assert abs(scores[got] - scores[expected]) < tol, (
                f"rank {position + 1}: got {got} ({scores.get(got)}), expected {expected} ({scores[expected]})"
            )
    # Near-tie swaps aside, the two lists hold the same ids (a boundary near-tie may differ: check scores).
    for node_id in set(got_ids) ^ set(expected_ids):
        assert abs(scores[node_id] - scores[expected_ids[-1]]) < tol, node_id


def fake_cross_encoder(window: int = 512, outputs: int = 1) -> SimpleNamespace:
    """What CrossEncoderScorer reads of a model to name it: window, activation and head (no weights needed)."""
    labels = SimpleNamespace(id2label={index: f"LABEL_{index}" for index in range(outputs)})
    return SimpleNamespace(
        tokenizer=None, max_seq_length=window, activation_fn=torch.nn.Identity(), num_labels=outputs, config=labels
    )


class RecordingPairs:
    """A real scorer (any ``PairScorer``) that records every (query, text) pair it is asked to score."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.cache_key, self.window = inner.name, inner.cache_key, inner.window
        self.pairs: list[tuple[str, str]] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.pairs.extend((query, text) for text in texts)
        return self.inner.score(query, texts)


class RecordingScorer:
    """A ``PairScorer`` double: scores each text with ``score_text`` and records every batch it is asked for.

    For reranker logic that does not depend on a model (cascade, cache, ranking rules, evaluation plumbing).
    """

    def __init__(self, score_text: Callable[[str], float] = len, *, name: str = "test/scorer", window=None) -> None:
        self.name = name
        self.cache_key = ("recording", name)
        self.window = window
        self.score_text = score_text
        self.calls: list[list[str]] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.calls.append(list(texts))
        return [float(self.score_text(text)) for text in texts]

    @property
    def pairs(self) -> list[str]:
        """Every text scored, in order."""
        return [text for call in self.calls for text in call]


# `scripts/test.sh --quick`, the loop before each commit, leaves out the tests that need one of these: the SciFact
# subset embedded, a real server process, or a built wheel. CI runs everything.
FULL_SUITE_FIXTURES = frozenset(
    {"ingested", "chroma_server", "restartable_server", "infinity_server", "second_infinity_server", "venv_bin"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if FULL_SUITE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.full_suite)
