"""Backend selection and its errors, the export cache's identity of a model, and the cascade's logic (no models)."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError

from llama_index_twostage import backends
from llama_index_twostage.errors import ModelLoadError
from llama_index_twostage.models import load_cross_encoder
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.rerank import CrossEncoderRerank, PairScorer, shortlist
from llama_index_twostage.settings import RetrieverSettings


@pytest.fixture
def without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError


def test_missing_onnx_extra_names_the_extra(without_onnxruntime):
    with pytest.raises(ImportError, match=r'pip install "llama-index-twostage\[onnx\]"'):
        backends.require_onnx("onnx-int8")


def test_missing_onnx_extra_fails_the_load_before_any_model_is_read(without_onnxruntime, tmp_path):
    with pytest.raises(ModelLoadError) as excinfo:
        load_cross_encoder(
            f"org/not-downloaded-{uuid.uuid4().hex}",
            device="cpu",
            max_length=None,
            trust_remote_code=False,
            backend="onnx",
            cache_dir=tmp_path,
        )
    message = str(excinfo.value)
    assert "rerank_backend 'onnx'" in message and 'pip install "llama-index-twostage[onnx]"' in message


@pytest.mark.parametrize(
    ("backend", "kwargs"),
    [
        ("torch", {}),
        ("onnx", {}),
        ("onnx-int8", {}),
        ("torch-bf16", {"dtype": "bfloat16"}),
        ("torch-fp16", {"dtype": "float16"}),
    ],
)
def test_torch_model_kwargs_per_backend(backend, kwargs):
    assert {
        key: str(value).removeprefix("torch.") for key, value in backends.torch_model_kwargs(backend).items()
    } == kwargs
    assert backends.is_onnx(backend) == backend.startswith("onnx")


def test_unknown_backend_is_rejected_by_settings():
    with pytest.raises(ValidationError, match="rerank_backend"):
        RetrieverSettings(rerank_backend="tensorrt")


def test_export_dir_changes_when_the_weights_change(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(b"weights")
    first = backends.export_dir(tmp_path / "cache", str(model))
    assert first.parent == tmp_path / "cache" and first.name.startswith("my-model-")
    assert backends.export_dir(tmp_path / "cache", str(model)) == first
    os.utime(weights, ns=(1, 1))
    assert backends.export_dir(tmp_path / "cache", str(model)) != first


def test_export_dir_of_a_hub_id_is_a_safe_folder_name(tmp_path):
    folder = backends.export_dir(tmp_path, "cross-encoder/ms-marco-MiniLM-L6-v2")
    assert folder.parent == tmp_path and folder.name.startswith("ms-marco-MiniLM-L6-v2-")


def test_cascade_settings_are_checked():
    assert RetrieverSettings(cascade_k=20, cascade_backend="onnx-int8").cascade_k == 20
    assert RetrieverSettings(cascade_k=20, max_length=512, cascade_max_length=128).cascade_max_length == 128
    with pytest.raises(ValidationError, match="cascade scorer equals the reranker"):
        RetrieverSettings(cascade_k=20)
    with pytest.raises(ValidationError, match=r"cascade_k \(3\) < top_k \(5\)"):
        RetrieverSettings(cascade_k=3, cascade_backend="onnx-int8")


def test_shortlist_keeps_the_best_in_original_order_and_ties_to_the_earlier():
    assert shortlist([0.1, 0.9, 0.5, 0.9, 0.2], 3) == [1, 2, 3]
    assert shortlist([0.5, 0.5, 0.5], 2) == [0, 1]
    assert shortlist([0.3], 5) == [0]


@pytest.fixture
def model_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Fake scorers: the int8 one scores by text length, the full one by reversed length; calls are recorded."""
    calls: list[tuple[str, list[str]]] = []

    def predict(self: PairScorer, query: str, texts: list[str]) -> list[float]:
        calls.append((self.backend, list(texts)))
        sign = 1.0 if self.backend == "onnx-int8" else -1.0
        return [sign * len(text) for text in texts]

    monkeypatch.setattr(PairScorer, "predict", predict)
    monkeypatch.setattr(CrossEncoderRerank, "load", lambda self: None)
    monkeypatch.setattr(CrossEncoderRerank, "count_truncated", lambda self, query, texts: 0)
    return calls


def candidates(count: int) -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=f"n{size}", text="x" * size), score=0.5) for size in range(1, count + 1)]


def test_cascade_sends_only_the_cheap_shortlist_to_the_full_model(model_calls):
    reranker = CrossEncoderRerank(
        model=f"fake-{uuid.uuid4().hex}", top_k=2, cascade_k=3, cascade_backend="onnx-int8", score_cache_size=0
    )
    results = reranker.postprocess_nodes(candidates(6), query_str="q")
    assert [(backend, len(texts)) for backend, texts in model_calls] == [("onnx-int8", 6), ("torch", 3)]
    assert model_calls[1][1] == ["xxxx", "xxxxx", "xxxxxx"]  # the cheap scorer's best three, in stage-1 order
    assert [node.node.node_id for node in results] == ["n4", "n5"]  # the full model decides among them
    info = stage_info(results[0])
    assert (info["cascade_pairs_scored"], info["pairs_scored"]) == (6, 3)


def test_cascade_is_skipped_when_candidates_fit_the_shortlist(model_calls):
    reranker = CrossEncoderRerank(model=f"fake-{uuid.uuid4().hex}", top_k=2, cascade_k=5, cascade_backend="onnx-int8")
    results = reranker.postprocess_nodes(candidates(4), query_str="q")
    assert [backend for backend, _ in model_calls] == ["torch"]
    assert "cascade_pairs_scored" not in stage_info(results[0])


def test_reranker_without_cascade_has_no_cascade_scorer():
    assert CrossEncoderRerank(model="m").cascade_scorer() is None
    cheap = CrossEncoderRerank(model="m", max_length=512, cascade_k=10, cascade_max_length=128).cascade_scorer()
    assert cheap is not None and (cheap.backend, cheap.max_length) == ("torch", 128)
