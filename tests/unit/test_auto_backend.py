"""``rerank_backend="auto"`` as logic: what counts as ranking like fp32, which hardware gets which candidate, and
that a decision is made once per model and machine. The real calibration runs in tests/integration."""

from __future__ import annotations

import time

import pytest

from llama_index_twostage.stage2 import auto
from llama_index_twostage.stage2.auto import agreement, calibrate, choose_backend

SCORES = [float(value) for value in range(16)]


def test_agreement_counts_top10_overlap_and_same_top1():
    assert agreement([SCORES], [SCORES]).passes
    swapped_at_the_cut = SCORES.copy()
    swapped_at_the_cut[5], swapped_at_the_cut[6] = swapped_at_the_cut[6], swapped_at_the_cut[5]  # ranks 10 and 11
    result = agreement([SCORES, SCORES], [swapped_at_the_cut, SCORES])
    assert (result.top_overlap, result.same_top1, result.queries) == (0.95, 2, 2)
    assert not result.passes  # below 0.98
    new_top = SCORES.copy()
    new_top[15], new_top[14] = new_top[14], new_top[15]
    assert agreement([SCORES], [new_top]).same_top1 == 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2"}, None),
        ({"avx2", "avx512f", "avx512_vnni"}, None),
        ({"avx512_bf16"}, "torch-bf16"),
        ({"amx_bf16"}, "torch-bf16"),
    ],
)
def test_only_native_bf16_cpus_get_a_half_precision_candidate(monkeypatch, flags, expected):
    monkeypatch.setattr(auto, "cpu", lambda: ("Test CPU", frozenset(flags)))
    backend, hardware = auto.native_half_precision("cpu")
    assert backend == expected
    assert hardware.startswith("Test CPU")
    assert auto.native_half_precision("mps")[0] is None


def fake_scorer(scores: list[float], delay_s: float = 0.0):
    def score(query: str, texts: list[str]) -> list[float]:
        time.sleep(delay_s)
        return scores[: len(texts)]

    return score


def test_calibration_keeps_the_fastest_candidate_that_ranks_alike_and_is_faster(monkeypatch):
    monkeypatch.setattr(auto, "calibration_set", lambda: [("q", ["p"] * 16)] * 3)
    slow, fast, faster = fake_scorer(SCORES, 0.02), fake_scorer(SCORES, 0.01), fake_scorer(SCORES, 0.0)
    assert calibrate(slow, {"torch-bf16": fast}, "cpu X").backend == "torch-bf16"
    assert calibrate(slow, {"torch-bf16": fast, "onnx-int8": faster}, "cpu X").backend == "onnx-int8"
    reordered = fake_scorer(list(reversed(SCORES)))
    choice = calibrate(slow, {"torch-bf16": fast, "onnx-int8": reordered}, "cpu X")
    assert choice.backend == "torch-bf16" and "onnx-int8: top-10 overlap" in choice.reason
    choice = calibrate(slow, {"onnx-int8": reordered}, "cpu X")
    assert choice.backend == "torch" and "same top-1 0/3" in choice.reason
    assert calibrate(faster, {"torch-bf16": slow}, "cpu X").reason.startswith("fp32: nothing faster ranks like it")


def test_a_decision_is_stored_per_model_and_machine_and_reused(monkeypatch, tmp_path):
    monkeypatch.setattr(auto, "cpu", lambda: ("Test CPU", frozenset({"avx512_bf16"})))
    monkeypatch.setattr(auto, "onnx_installed", lambda: False)
    monkeypatch.setattr(auto, "calibration_set", lambda: [("q", ["p"] * 16)])
    loaded: list[str] = []

    def scorer_of(backend: str):
        loaded.append(backend)
        return fake_scorer(SCORES, 0.02 if backend == "torch" else 0.0)

    first = choose_backend("org/model", "cpu", tmp_path, scorer_of)
    assert first.backend == "torch-bf16" and loaded == ["torch", "torch-bf16"]
    assert choose_backend("org/model", "cpu", tmp_path, scorer_of) == first
    assert loaded == ["torch", "torch-bf16"]  # the second process reads the decision, scores nothing
    choose_backend("org/other-model", "cpu", tmp_path, scorer_of)
    assert len(loaded) == 4  # another model: its own calibration


def test_no_candidate_means_fp32_without_loading_anything(monkeypatch, tmp_path):
    monkeypatch.setattr(auto, "cpu", lambda: ("Plain CPU", frozenset({"avx2"})))
    monkeypatch.setattr(auto, "onnx_installed", lambda: False)

    def never(backend: str):
        raise AssertionError("nothing to calibrate")

    choice = choose_backend("org/model", "cpu", tmp_path, never)
    assert choice.backend == "torch"
    assert (
        choice.reason
        == "fp32: no native half precision on Plain CPU (no AVX512-BF16 or AMX), no int8 runtime installed"
    )


def test_int8_is_a_cpu_candidate_only_with_the_onnx_extra(monkeypatch):
    monkeypatch.setattr(auto, "cpu", lambda: ("Plain CPU", frozenset({"avx2"})))
    monkeypatch.setattr(auto, "onnx_installed", lambda: True)
    assert auto.candidate_backends("cpu")[0] == ["onnx-int8"]
    monkeypatch.setattr(auto, "cpu", lambda: ("BF16 CPU", frozenset({"avx512_bf16"})))
    assert auto.candidate_backends("cpu")[0] == ["torch-bf16", "onnx-int8"]
    assert auto.candidate_backends("mps")[0] == []
