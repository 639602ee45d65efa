"""embed_backend: the real bi-encoder on each runtime, ``auto``'s calibration, and a collection's recorded runtime
judged against another's. Calibrations here use a few dozen texts (the shipped set takes tens of seconds)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import onnx
import pytest
from llama_index.core import Document
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from llama_index_twostage.embed_backends import (
    DECISIONS_FILE,
    Calibration,
    EmbedBackends,
    Embedded,
    SearchAgreement,
    search_agreement,
)
from llama_index_twostage.errors import CollectionMismatchError
from llama_index_twostage.ingest import ingest_into
from llama_index_twostage.models import embedding_backend
from llama_index_twostage.stage1 import ChromaRecallRetriever
from llama_index_twostage.store import ChromaStore, CollectionContract

BACKENDS = ["torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-bf16"]
SMALL = Calibration(Calibration.default().queries[::4], Calibration.default().corpus[::5], top_n=10)
IMPOSSIBLE = replace(SMALL, min_top_overlap=1.01)  # no other runtime passes: the refusal, measured for real
DOCUMENTS = [
    Document(text="A volcano erupts when magma rises through the crust and escapes as lava.", doc_id="volcano"),
    Document(text="Ocean tides are caused mainly by the gravitational pull of the moon.", doc_id="tides"),
    Document(text="Insulin is a hormone made by the pancreas; it lowers blood glucose.", doc_id="insulin"),
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")  # one ONNX export for the module


def backends_for(embed_model_dir, cache_dir, calibration=SMALL) -> EmbedBackends:
    return EmbedBackends(
        embed_model_dir, device="cpu", batch_size=8, trust_remote_code=False, cache_dir=cache_dir,
        calibration=calibration,
    )  # fmt: skip


def test_each_runtime_embeds_like_fp32_and_says_which_it_is(embed_model_dir, cache_dir):
    backends = backends_for(embed_model_dir, cache_dir)
    texts = SMALL.corpus[:6]
    fp32 = np.asarray(backends.load("torch").get_text_embedding_batch(texts))
    for backend in BACKENDS[1:]:
        embedding = backends.load(backend)
        vectors = np.asarray(embedding.get_text_embedding_batch(texts))
        assert np.min(np.sum(vectors * fp32, axis=1)) > 0.98, backend  # unit vectors: the cosine with fp32
        assert embedding_backend(embedding) == backend == embedding.embed_backend
        assert isinstance(embedding, HuggingFaceEmbedding)  # still LlamaIndex's embedding, for any LlamaIndex use
    exports = sorted(cache_dir.rglob("*.onnx"), key=lambda path: path.name)
    assert [path.name for path in exports] == ["encoder_fused_r1.onnx", "encoder_int8_r2.onnx"]  # OpenVINO: none
    fused, int8 = (Counter(node.op_type for node in onnx.load(str(path)).graph.node) for path in exports)
    assert fused["Attention"] == int8["QAttention"] == 6  # one per layer: fused, then quantized
    written = {path: path.stat().st_mtime_ns for path in cache_dir.rglob("*.onnx")}
    backends.load("onnx-int8")
    assert {path: path.stat().st_mtime_ns for path in cache_dir.rglob("*.onnx")} == written  # reused, not redone


def test_a_plain_hugging_face_embedding_is_known_by_its_weights(embed_model_dir):
    assert embedding_backend(HuggingFaceEmbedding(model_name=embed_model_dir, device="cpu")) == "torch"


def test_auto_keeps_only_what_searches_like_fp32_and_decides_once(embed_model_dir, cache_dir, monkeypatch):
    backends = backends_for(embed_model_dir, cache_dir)
    _, _, candidates = backends._machine()
    chosen = backends.auto()
    for candidate in candidates:
        assert f"{candidate}: top-10 overlap" in chosen.backend_reason  # every candidate measured, and said
    machine, _, _ = backends._machine()
    decisions = (cache_dir / DECISIONS_FILE).read_text()
    if chosen.embed_backend != "torch":
        assert chosen.backend_reason.startswith(f"{chosen.embed_backend}: fastest that searches like fp32")
        same = backends_for(embed_model_dir, cache_dir)
        assert same.compatible(chosen.embed_backend, chosen.embed_backend, chosen)[0]  # read from the stored pairs
    assert f"{machine}|auto:" in decisions
    assert all(f"{machine}|torch>{candidate}" in decisions for candidate in candidates)

    def no_calibration(*_):
        raise AssertionError("a stored decision must not be measured again")

    monkeypatch.setattr(EmbedBackends, "_embed_in_turns", no_calibration)
    again = backends_for(embed_model_dir, cache_dir).auto()
    assert (again.embed_backend, again.backend_reason) == (chosen.embed_backend, chosen.backend_reason)


def test_another_precision_reads_and_extends_a_collection_only_within_tolerance(
    embed_model_dir, cache_dir, cheap_settings
):
    settings = cheap_settings("memory")
    store = ChromaStore(settings.collection, settings.chroma)
    try:
        ingest_into(store, backends_for(embed_model_dir, cache_dir).load("torch"), DOCUMENTS, show_progress=False)
        assert CollectionContract.of(store.open_collection()).embed_backend == "torch"
        lenient = backends_for(embed_model_dir, cache_dir, replace(SMALL, min_top_overlap=0.0)).load("torch-bf16")
        results = ChromaRecallRetriever(store, lenient, recall_k=3).retrieve("why does magma come out of a volcano?")
        assert results[0].node.ref_doc_id == "volcano"  # bf16 queries on fp32 vectors: accepted, and they work
        strict = backends_for(embed_model_dir, cache_dir, IMPOSSIBLE).load("torch-bf16")
        with pytest.raises(CollectionMismatchError) as refused:
            ChromaRecallRetriever(store, strict, recall_k=3).retrieve("volcano")
        text = str(refused.value)
        assert "written with embed_backend 'torch'" in text and "embeds with 'torch-bf16'" in text
        assert "top-10 overlap" in text and "set embed_backend to 'torch'" in text
        with pytest.raises(CollectionMismatchError, match="set embed_backend to 'torch'"):
            ingest_into(store, strict, [Document(text="Lava cools into basalt.", doc_id="lava")], show_progress=False)
        assert store.open_collection().count() == len(DOCUMENTS)  # the refused writer wrote nothing
    finally:
        store.close()


def test_the_setting_reaches_the_bi_encoder_and_the_record(settings_for, pipeline_for, tmp_path):
    settings = settings_for("memory", embed_backend="torch-bf16", model_cache_dir=tmp_path)
    pipeline = pipeline_for(settings)
    assert pipeline.embed_model.embed_backend == "torch-bf16"
    pipeline.ingest(DOCUMENTS[:1])
    assert CollectionContract.of(pipeline.store.open_collection()).embed_backend == "torch-bf16"


def test_search_agreement_counts_overlap_at_depth_and_the_nearest_text():
    rng = np.random.default_rng(0)
    corpus, queries = rng.normal(size=(30, 8)), rng.normal(size=(4, 8))
    calibration = Calibration(["q"] * 4, ["t"] * 30, top_n=10)
    reference = Embedded(queries, corpus, seconds=0.0)
    assert search_agreement(reference, queries, corpus, calibration) == SearchAgreement(1.0, 4, 4, 10)
    shuffled = search_agreement(reference, queries, corpus[::-1], calibration)  # same texts, other ids
    assert shuffled.top_overlap < 1.0 and not shuffled.passes
