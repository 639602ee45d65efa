"""``rerank_backend="auto"`` as logic: what counts as ranking like fp32, which hardware gets which candidate, and
that a decision is made once per model and machine. Hardware, candidates, calibration pairs and the clock are given
as arguments; the real calibration runs in tests/integration."""

from __future__ import annotations

import pytest

from llama_index_twostage.stage2.auto import (
    AutoBackend,
    Hardware,
    agreement,
    calibrate,
    candidate_backends,
    untried_extras,
)

SCORES = [float(value) for value in range(16)]
PAIRS = [("q", ["p"] * 16)] * 3
BF16_CPU = Hardware("cpu", "Test CPU", frozenset({"avx512_bf16"}))
PLAIN_CPU = Hardware("cpu", "Plain CPU", frozenset({"avx2"}))


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
def test_only_native_bf16_cpus_get_a_half_precision_candidate(flags, expected):
    backend, found = Hardware("cpu", "Test CPU", frozenset(flags)).native_half_precision()
    assert backend == expected
    assert found.startswith("Test CPU")
    assert Hardware("mps", "Test CPU", frozenset(flags)).native_half_precision()[0] is None
    assert Hardware("cuda:0", "Test GPU").native_half_precision() == ("torch-fp16", "CUDA (Test GPU)")


class FakeClock:
    """Time that passes only when a fake scorer says so: timings without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def scorer(self, scores: list[float], seconds: float = 0.0):
        def score(query: str, texts: list[str]) -> list[float]:
            self.now += seconds
            return scores[: len(texts)]

        return score


def test_calibration_keeps_the_fastest_candidate_that_ranks_alike_and_is_faster():
    clock = FakeClock()
    slow, fast, faster = clock.scorer(SCORES, 0.02), clock.scorer(SCORES, 0.01), clock.scorer(SCORES)
    assert calibrate(slow, {"torch-bf16": fast}, "cpu X", PAIRS, clock).backend == "torch-bf16"
    choice = calibrate(slow, {"torch-bf16": fast, "onnx-int8": faster}, "cpu X", PAIRS, clock)
    assert choice.backend == "onnx-int8" and "torch-bf16: top-10 overlap 1.000, same top-1 3/3, 0.50x" in (
        choice.reason
    )
    reordered = clock.scorer(list(reversed(SCORES)))
    choice = calibrate(slow, {"torch-bf16": fast, "onnx-int8": reordered}, "cpu X", PAIRS, clock)
    assert choice.backend == "torch-bf16" and "onnx-int8: top-10 overlap" in choice.reason
    choice = calibrate(slow, {"onnx-int8": reordered}, "cpu X", PAIRS, clock)
    assert choice.backend == "torch" and "same top-1 0/3" in choice.reason
    barely_faster = clock.scorer(SCORES, 0.019)  # 0.95x fp32's time: not worth the risk to the ranking
    assert calibrate(slow, {"torch-bf16": barely_faster}, "cpu X", PAIRS, clock).reason.startswith(
        "fp32: nothing faster ranks like it"
    )


def test_backends_are_timed_on_passages_of_a_real_candidates_length():
    clock = FakeClock()

    def costing(per_call: float, per_word: float):
        def score(query: str, texts: list[str]) -> list[float]:
            clock.now += sum(per_call + per_word * len(text.split()) for text in texts)
            return SCORES[: len(texts)]

        return score

    fp32 = costing(0.005, 0.001)
    cheap_calls = costing(0.0, 0.0015)  # 0.25x fp32's time on one-word passages, 1.06x on lengthened ones
    choice = calibrate(fp32, {"onnx": cheap_calls}, "cpu X", PAIRS, clock)
    assert choice.backend == "torch" and "onnx: top-10 overlap 1.000, same top-1 3/3, 1.06x" in choice.reason
    cheap_words = costing(0.01, 0.0001)  # 1.68x fp32's time on one-word passages, 0.66x on lengthened ones
    assert calibrate(fp32, {"onnx": cheap_words}, "cpu X", PAIRS, clock).backend == "onnx"


def test_a_decision_is_stored_per_model_and_machine_and_reused(tmp_path):
    clock = FakeClock()
    chooser = AutoBackend(BF16_CPU, ("torch-bf16",), PAIRS[:1], clock)
    loaded: list[str] = []

    def scorer_of(backend: str):
        loaded.append(backend)
        return clock.scorer(SCORES, 0.02 if backend == "torch" else 0.0)

    first = chooser.choose("org/model", tmp_path, scorer_of)
    assert first.backend == "torch-bf16" and loaded == ["torch", "torch-bf16"]
    assert AutoBackend(BF16_CPU, ("torch-bf16",), PAIRS[:1], clock).choose("org/model", tmp_path, scorer_of) == first
    assert loaded == ["torch", "torch-bf16"]  # the second process reads the decision, scores nothing
    chooser.choose("org/other-model", tmp_path, scorer_of)
    assert len(loaded) == 4  # another model: its own calibration
    AutoBackend(BF16_CPU, ("torch-bf16", "onnx-int8"), PAIRS[:1], clock).choose("org/model", tmp_path, scorer_of)
    assert loaded[4:] == ["torch", "torch-bf16", "onnx-int8"]  # other candidates: calibrated again
    AutoBackend(BF16_CPU, ("torch-bf16",), PAIRS[:2], clock).choose("org/model", tmp_path, scorer_of)
    assert len(loaded) == 9  # another calibration set: calibrated again


def test_no_candidate_means_fp32_without_loading_anything(tmp_path):
    def never(backend: str):
        raise AssertionError("nothing to calibrate")

    choice = AutoBackend(PLAIN_CPU, (), PAIRS).choose("org/model", tmp_path, never)
    assert choice.backend == "torch"
    assert choice.reason == (
        "fp32: no native half precision on Plain CPU (no AVX512-BF16 or AMX); not tried, not installed: the onnx and "
        'openvino extra (pip install "llama-index-twostage[onnx,openvino]")'
    )
    assert not (tmp_path / "auto-backend.json").exists()


def test_cpu_candidates_follow_the_installed_extras_and_native_bf16():
    assert candidate_backends(PLAIN_CPU, onnx=True)[0] == ["onnx", "onnx-int8"]
    assert candidate_backends(PLAIN_CPU, onnx=False)[0] == []
    assert candidate_backends(BF16_CPU, onnx=True)[0] == ["torch-bf16", "onnx", "onnx-int8"]
    assert candidate_backends(Hardware("mps", "Apple M2"), onnx=True)[0] == []
    assert candidate_backends(Hardware("cuda", "Test GPU"), onnx=True)[0] == ["torch-fp16"]
    assert candidate_backends(PLAIN_CPU, onnx=True, openvino=True)[0] == ["onnx", "onnx-int8", "openvino"]
    assert candidate_backends(BF16_CPU, onnx=False, openvino=True)[0] == ["torch-bf16", "openvino-bf16", "openvino"]
    assert candidate_backends(Hardware("cuda", "Test GPU"), onnx=True, openvino=True)[0] == ["torch-fp16"]


def test_detected_hardware_names_this_cpu():
    hardware = Hardware.detect("cpu")
    assert hardware.device == "cpu" and hardware.name
    assert AutoBackend.detect("cpu").hardware == hardware


def test_a_reason_names_the_extras_a_cpu_could_not_try_and_how_to_add_them(tmp_path):
    assert untried_extras("cpu", ["torch-bf16", "onnx", "onnx-int8"]) == (
        '; not tried, not installed: the openvino extra (pip install "llama-index-twostage[openvino]")'
    )
    assert untried_extras("cpu", ["onnx", "onnx-int8", "openvino"]) == ""
    assert untried_extras("cuda", ["torch-fp16"]) == ""  # the extras add CPU runtimes only
    clock = FakeClock()
    chooser = AutoBackend(BF16_CPU, ("torch-bf16",), PAIRS[:1], clock)
    choice = chooser.choose("org/model", tmp_path, lambda backend: clock.scorer(SCORES, 0.02 * (backend == "torch")))
    assert choice.backend == "torch-bf16"
    assert choice.reason.endswith('the onnx and openvino extra (pip install "llama-index-twostage[onnx,openvino]")')
    assert AutoBackend(Hardware("mps", "Apple M2"), (), PAIRS).choose("org/model", tmp_path, print).reason == (
        "fp32: no native half precision on device mps"
    )
