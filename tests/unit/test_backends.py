"""Backend selection and its errors, the export cache's identity of a model, and the cascade's logic (no models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError
from support import RecordingScorer

from llama_index_twostage.errors import ConfigurationError, ModelLoadError
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.stage2 import backends, calibration
from llama_index_twostage.stage2.rerank import CrossEncoderRerank, shortlist
from llama_index_twostage.stage2.scorers import load_cross_encoder


@pytest.fixture
def without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError


def test_missing_onnx_extra_names_the_extra(without_onnxruntime):
    with pytest.raises(ImportError, match=r'pip install "llama-index-twostage\[onnx\]"'):
        backends.require_runtime("onnx-int8")
    assert not backends.installed("onnx") and not backends.installed("openvino")


def test_missing_openvino_names_its_extra_for_either_encoder(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r'rerank_backend .openvino-bf16. needs .*\[openvino\]"'):
        backends.require_runtime("openvino-bf16")
    with pytest.raises(ImportError, match=r"embed_backend .openvino. needs the optional packages openvino"):
        backends.require_runtime("openvino", "embed_backend")
    assert backends.installed("onnx") and not backends.installed("openvino")


def test_openvinos_int8_also_needs_nncf_and_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(
        ImportError,
        match=r'openvino-int8. needs the optional packages openvino and nncf .*\[openvino\]"',
    ):
        backends.require_runtime("openvino-int8")
    assert backends.installed("openvino") and not backends.installed("openvino-int8")  # fp32 and bf16 need no NNCF


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_openvino_on_a_gpu_device_is_refused_with_what_to_do(device, tmp_path):
    with pytest.raises(ModelLoadError, match=rf"runs on the CPU, but device is '{device}': unset device"):
        load_cross_encoder("org/not-downloaded", device, None, False, "openvino", tmp_path)
    backends.require_cpu("onnx", device)  # ONNX Runtime has a CUDA provider
    backends.require_cpu("openvino-bf16", "cpu")
    backends.require_cpu("openvino-bf16", None)


def test_missing_onnx_extra_fails_the_load_before_any_model_is_read(without_onnxruntime, tmp_path):
    with pytest.raises(ModelLoadError) as excinfo:
        load_cross_encoder(
            "org/not-downloaded",
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
        ("openvino", {}),
        ("openvino-bf16", {}),
        ("openvino-int8", {}),
        ("torch-bf16", {"dtype": "bfloat16"}),
        ("torch-fp16", {"dtype": "float16"}),
    ],
)
def test_torch_model_kwargs_per_backend(backend, kwargs):
    assert {
        key: str(value).removeprefix("torch.") for key, value in backends.torch_model_kwargs(backend).items()
    } == kwargs
    assert backends.is_onnx(backend) == backend.startswith("onnx")
    assert backends.is_openvino(backend) == backend.startswith("openvino")
    assert backends.runs_an_export(backend) == (not backend.startswith("torch"))


def test_int8_ranges_are_calibrated_on_short_and_abstract_length_passages():
    short = calibration.calibration_set()
    pairs = calibration.activation_calibration_set()
    assert pairs[: len(short)] == short and [query for query, _ in pairs[len(short) :]] == [query for query, _ in short]
    words = [[len(passage.split()) for passage in passages] for _, passages in short]
    lengthened = [[len(passage.split()) for passage in passages] for _, passages in pairs[len(short) :]]
    assert all(len(a) == len(b) == 16 for a, b in zip(words, lengthened))
    assert max(map(max, words)) < 40 and min(map(min, lengthened)) > 150  # a sentence; about an abstract
    assert calibration.lengthened(["a", "b", "c"], joined=2) == ["a b", "b c", "c a"]


@pytest.mark.parametrize("backend", ["tensorrt", "onnx-int8-static"])  # the second: removed, dominated by onnx-int8
def test_unknown_backend_is_rejected_by_settings(backend):
    with pytest.raises(ValidationError, match="rerank_backend"):
        RetrieverSettings(rerank_backend=backend)


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
def scorers() -> tuple[RecordingScorer, RecordingScorer]:
    """A cheap scorer that prefers long texts and a full one that prefers short texts, both recording their calls."""
    return RecordingScorer(len, name="cheap"), RecordingScorer(lambda text: -len(text), name="full")


def candidates(count: int) -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=f"n{size}", text="x" * size), score=0.5) for size in range(1, count + 1)]


def test_cascade_sends_only_the_cheap_shortlist_to_the_full_model(scorers):
    cheap, full = scorers
    reranker = CrossEncoderRerank(full, top_k=2, cascade_scorer=cheap, cascade_k=3)
    results = reranker.postprocess_nodes(candidates(6), query_str="q")
    assert [len(call) for call in cheap.calls] == [6] and [len(call) for call in full.calls] == [3]
    assert full.calls[0] == ["xxxx", "xxxxx", "xxxxxx"]  # the cheap scorer's best three, in stage-1 order
    assert [node.node.node_id for node in results] == ["n4", "n5"]  # the full model decides among them
    info = stage_info(results[0])
    assert (info["cascade_pairs_scored"], info["pairs_scored"]) == (6, 3)


def test_cascade_is_skipped_when_candidates_fit_the_shortlist(scorers):
    cheap, full = scorers
    reranker = CrossEncoderRerank(full, top_k=2, cascade_scorer=cheap, cascade_k=5)
    results = reranker.postprocess_nodes(candidates(4), query_str="q")
    assert cheap.calls == [] and len(full.calls) == 1
    assert "cascade_pairs_scored" not in stage_info(results[0])


def test_reranker_checks_the_cascade_rules_itself(scorers):
    """Built directly, not through the settings: a cascade_k below top_k used to return cascade_k results silently."""
    cheap, full = scorers
    with pytest.raises(ConfigurationError, match=r"cascade_k \(2\) < top_k \(5\)"):
        CrossEncoderRerank(full, top_k=5, cascade_scorer=cheap, cascade_k=2)
    with pytest.raises(ConfigurationError, match="needs both cascade_scorer and cascade_k"):
        CrossEncoderRerank(full, top_k=5, cascade_k=10)
    with pytest.raises(ConfigurationError, match="needs both cascade_scorer and cascade_k"):
        CrossEncoderRerank(full, top_k=5, cascade_scorer=cheap)
    with pytest.raises(ConfigurationError, match="equals the reranker's scorer"):
        CrossEncoderRerank(full, top_k=5, cascade_scorer=RecordingScorer(name="full"), cascade_k=10)
    with pytest.raises(ConfigurationError, match="not a PairScorer"):
        CrossEncoderRerank("cross-encoder/ms-marco-MiniLM-L6-v2", top_k=5)  # type: ignore[arg-type]


def test_reranker_without_cascade_has_no_cascade_scorer(scorers):
    assert CrossEncoderRerank(scorers[1]).cascade_scorer is None


def test_a_decision_file_merges_entries_and_reads_missing_or_damaged_as_empty(tmp_path):
    decisions = backends.DecisionFile(tmp_path / "cache" / "decisions.json", "a test decision")
    assert decisions.get("a") is None  # no file yet
    decisions.put({"a": {"backend": "torch"}})
    decisions.put({"b": {"backend": "onnx"}})  # a second writer adds, keeps the first
    assert (decisions.get("a"), decisions.get("b")) == ({"backend": "torch"}, {"backend": "onnx"})
    decisions.path.write_text("{half a", encoding="utf-8")
    assert decisions.get("a") is None  # damaged: measured again, never an error


_PUT_MANY = """
import sys, time
from pathlib import Path
from llama_index_twostage.stage2.backends import DecisionFile
decisions = DecisionFile(Path(sys.argv[1]), "a test decision")
Path(sys.argv[1] + f".{sys.argv[2]}-ready").touch()
deadline = time.monotonic() + 60
while len(list(Path(sys.argv[1]).parent.glob("*-ready"))) < 2 and time.monotonic() < deadline:  # start together
    time.sleep(0.005)
for index in range(int(sys.argv[3])):
    decisions.put({f"{sys.argv[2]}-{index}": {"backend": "onnx", "padding": "x" * 2000}})
"""


def test_two_processes_adding_decisions_at_once_keep_each_others(tmp_path):
    """Two hosts sharing a model cache measure different models at once: neither loses the other's decisions."""
    shared = tmp_path / "cache" / "decisions.json"
    shared.parent.mkdir()
    writers = []
    for host in ("host-a", "host-b"):
        (tmp_path / host).mkdir()
        command = [sys.executable, "-c", _PUT_MANY, str(shared), host, "40"]
        writers.append(subprocess.Popen(command, cwd=tmp_path / host))
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    stored = json.loads(shared.read_text(encoding="utf-8"))
    assert sorted(stored) == sorted(f"{host}-{index}" for host in ("host-a", "host-b") for index in range(40))
    assert not list(shared.parent.glob("*.partial*"))


_QUANTIZE_THEN_CONFIGURE_LOGGING = """
import logging, sys
from pathlib import Path
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
from llama_index_twostage.stage2 import backends
package_log = logging.getLogger("llama_index_twostage")  # the application follows this package only, at debug
package_log.setLevel(logging.DEBUG)
package_log.addHandler(logging.StreamHandler(sys.stdout))
folder = Path(sys.argv[1])
weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "weight")
x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 8]) for name in ("x", "y"))
graph = helper.make_graph([helper.make_node("MatMul", ["x", "weight"], ["y"])], "tiny", [x], [y], [weight])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "tiny.onnx")
backends.quantize_int8(folder / "tiny.onnx", folder / "dynamic.onnx")
with backends.application_logging_untouched():  # what other code logs meanwhile goes where it would without it
    logging.getLogger("elsewhere").warning("unconfigured, as without the package")
    logging.getLogger("elsewhere").info("below the last resort's level")
logging.basicConfig(format="application: %(message)s")
logging.getLogger("application").warning("configured after quantizing")
"""


def test_quantizing_leaves_the_applications_logging_to_configure(tmp_path):
    """ONNX Runtime's quantizers log on the root logger, which would configure it before the application could; an
    application that follows this package at debug sees their messages there (and nothing loops)."""
    command = [sys.executable, "-c", _QUANTIZE_THEN_CONFIGURE_LOGGING, str(tmp_path)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert (tmp_path / "dynamic.onnx").is_file()
    assert finished.stderr.splitlines() == [
        "unconfigured, as without the package",  # where logging's last resort puts it
        "application: configured after quantizing",  # basicConfig still took effect
    ]
    assert "onnxruntime: Please consider" in finished.stdout  # at debug, where the application follows it


def test_an_export_hides_the_tracing_warnings_and_not_the_applications():
    """Warning filters are process-wide: while a model is traced, another thread's own warnings still show."""
    with pytest.warns(UserWarning) as shown, backends.tracing_warnings_hidden():
        warnings.warn_explicit("traced control flow", UserWarning, "_trace.py", 1, module="torch.jit._trace")
        warnings.warn_explicit("deprecated", FutureWarning, "utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("the application's own", UserWarning, "views.py", 1, module="application.views")
    assert [str(warning.message) for warning in shown] == ["the application's own"]


def test_a_decision_that_cannot_be_stored_is_a_warning(tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("", encoding="utf-8")
    decisions = backends.DecisionFile(blocked / "decisions.json", "a test decision")  # its folder is a file
    with caplog.at_level("WARNING", logger="llama_index_twostage"):
        decisions.put({"a": {"backend": "torch"}})
    assert [record.getMessage().split(" in ")[0] for record in caplog.records] == ["could not store a test decision"]
    assert decisions.get("a") is None
