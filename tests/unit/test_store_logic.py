"""Distances -> cosine similarity per Chroma space, and the collection contract with its embedding model."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest

from llama_index_twostage.errors import CollectionMismatchError, ConfigurationError
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.store import (
    ChromaStore,
    CollectionContract,
    HnswParameters,
    distance_space,
    distance_to_similarity,
    model_identity,
    verify_collection,
)


@pytest.fixture(scope="module")
def client():
    # Through the library's own store: a second EphemeralClient with other Chroma settings is refused.
    with ChromaStore(mode="memory") as store:
        yield store.client


@pytest.fixture(scope="module")
def unit_vectors() -> np.ndarray:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(12, 16))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def new_collection(client, *, space: str | None = None, metadata: dict | None = None, dim_vectors=None):
    kwargs = {"embedding_function": None, "metadata": metadata}
    if space is not None:
        kwargs["configuration"] = {"hnsw": {"space": space}}
    collection = client.create_collection(f"store-{uuid.uuid4().hex[:10]}", **kwargs)
    if dim_vectors is not None:
        collection.add(ids=[f"v{i}" for i in range(len(dim_vectors))], embeddings=dim_vectors.tolist())
    return collection


@pytest.mark.parametrize("space", ["cosine", "ip", "l2"])
def test_distance_to_similarity_equals_numpy_cosine(client, unit_vectors, space):
    collection = new_collection(client, space=space, dim_vectors=unit_vectors)
    assert distance_space(collection) == space
    query = unit_vectors[0] * 0.6 + unit_vectors[1] * 0.8
    query /= np.linalg.norm(query)
    result = collection.query(query_embeddings=[query.tolist()], n_results=len(unit_vectors), include=["distances"])
    expected = {f"v{i}": float(unit_vectors[i] @ query) for i in range(len(unit_vectors))}
    got = {node_id: distance_to_similarity(d, space) for node_id, d in zip(result["ids"][0], result["distances"][0])}
    assert got.keys() == expected.keys()
    for node_id, similarity in got.items():
        assert similarity == pytest.approx(expected[node_id], abs=1e-5), node_id


def test_distance_space_defaults_to_l2(client):
    assert distance_space(new_collection(client)) == "l2"


@pytest.mark.parametrize(
    ("model", "identity"),
    [
        ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("/models/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("./models/all-MiniLM-L6-v2/", "all-MiniLM-L6-v2"),
        ("C:\\models\\all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
    ],
)
def test_model_identity_drops_org_and_directory(model, identity):
    assert model_identity(model) == identity


def test_contract_accepts_a_local_copy_of_the_hub_model():
    CollectionContract("sentence-transformers/all-MiniLM-L6-v2", 384).check("../models/all-MiniLM-L6-v2", 384, "c")


def test_contract_names_both_models():
    contract = CollectionContract("sentence-transformers/all-MiniLM-L6-v2", 384)
    with pytest.raises(CollectionMismatchError) as excinfo:
        contract.check("BAAI/bge-small-en-v1.5", 384, "docs")
    text = str(excinfo.value)
    assert "'docs'" in text
    assert "sentence-transformers/all-MiniLM-L6-v2" in text and "BAAI/bge-small-en-v1.5" in text
    assert "set embed_model" in text


def test_contract_names_both_dimensions():
    with pytest.raises(CollectionMismatchError) as excinfo:
        CollectionContract("m", 384).check("org/m", 768, "docs")
    text = str(excinfo.value)
    assert "384-dimensional" in text and "produces 768" in text and "'docs'" in text


def test_contract_round_trips_through_collection_metadata(client):
    contract = CollectionContract("org/model", 16, "ip", "onnx-int8")
    collection = new_collection(client, space="ip", metadata=contract.to_metadata())
    assert CollectionContract.of(collection) == contract


def test_a_collection_that_recorded_no_runtime_was_written_in_fp32(client):
    # Before the runtime was recorded the bi-encoder always ran fp32; a hosted embedding records none either.
    collection = new_collection(client, metadata=CollectionContract("org/model", 16).to_metadata())
    assert CollectionContract.of(collection).embed_backend == "torch"


class Judge:
    """A tolerance stand-in (the contract's logic only; the measured one has tests in test_embed_backends.py)."""

    def __init__(self, accepted: bool) -> None:
        self.accepted, self.asked = accepted, []

    def __call__(self, writer: str) -> tuple[bool, str]:
        self.asked.append(writer)
        return self.accepted, "top-100 overlap 0.950, same nearest 29/30"


def test_another_runtime_is_judged_by_its_tolerance(client):
    collection = new_collection(client, metadata=CollectionContract("org/m", 16, embed_backend="torch").to_metadata())
    accepting, refusing = Judge(True), Judge(False)
    verify_collection(collection, "org/m", 16, "torch-bf16", accepting)
    assert accepting.asked == ["torch"]
    with pytest.raises(CollectionMismatchError) as excinfo:
        verify_collection(collection, "org/m", 16, "onnx-int8", refusing)
    text = str(excinfo.value)
    assert "embed_backend 'torch'" in text and "'onnx-int8'" in text and "overlap 0.950" in text
    assert "set embed_backend to 'torch'" in text
    same, unknown = Judge(False), Judge(False)
    verify_collection(collection, "org/m", 16, "torch", same)  # the writer's own runtime: nothing to judge
    verify_collection(collection, "org/m", 16, None, unknown)  # a hosted embedding: its precision is its own
    assert same.asked == unknown.asked == []


def test_another_runtime_without_a_judge_is_refused(client):
    collection = new_collection(client, metadata=CollectionContract("org/m", 16, embed_backend="onnx").to_metadata())
    with pytest.raises(CollectionMismatchError, match="not measured"):
        verify_collection(collection, "org/m", 16, "torch")


def test_foreign_collection_has_no_contract(client, unit_vectors):
    assert CollectionContract.of(new_collection(client, dim_vectors=unit_vectors)) is None


def test_verify_checks_dimension_of_unrecorded_collections(client, unit_vectors):
    collection = new_collection(client, space="cosine", dim_vectors=unit_vectors)
    verify_collection(collection, "any/model", 16)
    with pytest.raises(CollectionMismatchError):
        verify_collection(collection, "any/model", 384)


def test_unrecorded_dimension_mismatch_names_both_dimensions(client, unit_vectors):
    collection = new_collection(client, space="cosine", dim_vectors=unit_vectors)
    with pytest.raises(CollectionMismatchError, match="16-dimensional.*produces 384"):
        verify_collection(collection, "any/model", 384)


def test_verify_accepts_an_empty_unrecorded_collection(client):
    verify_collection(new_collection(client), "any/model", 384)


def test_verify_uses_the_recorded_contract(client):
    collection = new_collection(client, metadata=CollectionContract("org/a", 16).to_metadata())
    with pytest.raises(CollectionMismatchError, match="'org/a'.*'org/b'"):
        verify_collection(collection, "org/b", 16)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (RetrieverSettings(chroma_host="h", chroma_port=9), "the Chroma server at h:9"),
        (RetrieverSettings(chroma_mode="memory"), "the in-memory Chroma store"),
        (RetrieverSettings(persist_dir="/data/x"), "the embedded Chroma store at '/data/x'"),
    ],
)
def test_describe_store(settings, expected):
    assert ChromaStore(settings.collection, settings.chroma).describe() == expected


def test_store_takes_every_setting_it_reads_per_instance():
    settings = RetrieverSettings(
        collection="docs", chroma_host="h", chroma_port=9, chroma_timeout_s=0.5, chroma_retries=4, hnsw_ef_search=300
    )
    store = ChromaStore(settings.collection, settings.chroma)
    retries = store.config.retry.retries
    assert (store.collection_name, store.host, store.port, store.timeout_s, retries) == ("docs", "h", 9, 0.5, 4)
    assert store.hnsw == HnswParameters(ef_search=300)
    other = ChromaStore(settings.collection, settings.replace(chroma_timeout_s=3.0).chroma)
    assert (store.timeout_s, other.timeout_s) == (0.5, 3.0)


def test_store_checks_its_own_rules():
    with pytest.raises(ConfigurationError, match="needs chroma_host"):
        ChromaStore(mode="server")
    with pytest.raises(ConfigurationError, match="timeout_s: Input should be greater than 0"):
        ChromaStore(mode="memory", timeout_s=0)


def test_closing_an_embedded_store_releases_it_and_it_reopens(tmp_path):
    store = ChromaStore("docs", persist_dir=tmp_path)
    store.create_or_open_collection(CollectionContract("m", 3)).add(ids=["a"], embeddings=[[1.0, 0.0, 0.0]])
    store.close()
    with ChromaStore("docs", persist_dir=tmp_path) as reopened:
        assert reopened.open_collection().count() == 1


def test_hnsw_ef_search_is_set_at_creation_and_updated_on_reopen() -> None:
    # At creation, so the very process that ingests already searches with it (a later modify reaches an index only
    # once it is reopened); on reopen with another value, recorded in the collection.
    name = f"ef-{uuid.uuid4().hex[:8]}"
    contract = CollectionContract("all-MiniLM-L6-v2", 3)
    created = ChromaStore(name, mode="memory", hnsw=HnswParameters(ef_search=500)).create_or_open_collection(contract)
    assert created.configuration["hnsw"]["ef_search"] == 500
    reopened = ChromaStore(name, mode="memory", hnsw=HnswParameters(ef_search=700)).create_or_open_collection(contract)
    assert reopened.configuration["hnsw"]["ef_search"] == 700
    default = ChromaStore(f"{name}-d", mode="memory").create_or_open_collection(contract)
    assert default.configuration["hnsw"]["ef_search"] == 100  # Chroma's own default when the setting is unset


def test_hnsw_build_parameters_apply_at_creation_and_a_differing_reopen_is_said(caplog) -> None:
    name = f"build-{uuid.uuid4().hex[:8]}"
    contract = CollectionContract("all-MiniLM-L6-v2", 3)
    wide = HnswParameters(ef_construction=400, max_neighbors=32)
    created = ChromaStore(name, mode="memory", hnsw=wide).create_or_open_collection(contract)
    assert (created.configuration["hnsw"]["ef_construction"], created.configuration["hnsw"]["max_neighbors"]) == (
        400,
        32,
    )
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage.store"):
        ChromaStore(name, mode="memory", hnsw=wide).create_or_open_collection(contract)
    assert not caplog.records  # the same build: nothing to say
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage.store"):
        reopened = ChromaStore(name, mode="memory", hnsw=HnswParameters(max_neighbors=48)).create_or_open_collection(
            contract
        )
    assert reopened.configuration["hnsw"]["max_neighbors"] == 32  # Chroma cannot rebuild an index in place
    assert any("max_neighbors=32; hnsw_max_neighbors=48 applies only to new" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("field", ["hnsw_ef_construction", "hnsw_max_neighbors"])
def test_hnsw_build_parameters_are_validated(field) -> None:
    with pytest.raises(ValueError, match=field):
        RetrieverSettings(**{field: 1 if field == "hnsw_max_neighbors" else 0})


@pytest.mark.parametrize("folder", ["empty", "not-a-store"])
def test_reading_a_folder_that_holds_no_store_creates_nothing(tmp_path, folder):
    from llama_index_twostage.errors import CollectionNotFoundError

    target = tmp_path / folder
    target.mkdir()
    if folder == "not-a-store":
        (target / "notes.txt").write_text("a user's own files")
    before = sorted(path.name for path in target.iterdir())
    with pytest.raises(CollectionNotFoundError, match="no embedded Chroma store at"):
        ChromaStore("docs", persist_dir=target).open_collection()
    assert sorted(path.name for path in target.iterdir()) == before


def test_a_store_refuses_infinite_timeouts():
    with pytest.raises(ConfigurationError, match="finite"):
        ChromaStore(mode="memory", timeout_s=float("inf"))
