"""embed_backend auto's rule on measured vectors: the fastest runtime that searches like fp32 and is faster, else
fp32 (the measurements themselves, on the real model, are in tests/integration/test_embed_backends.py)."""

from pathlib import Path

import numpy as np

from llama_index_twostage.embed_backends import Calibration, EmbedBackends, Embedded

RNG = np.random.default_rng(7)
QUERIES, CORPUS = RNG.normal(size=(6, 16)), RNG.normal(size=(40, 16))


def backends_measured(**vectors: tuple[np.ndarray, np.ndarray]) -> EmbedBackends:
    calibration = Calibration(["q"] * len(QUERIES), ["t"] * len(CORPUS), top_n=10)
    backends = EmbedBackends(
        "org/model", device="cpu", batch_size=8, trust_remote_code=False, cache_dir=Path("unused"),
        calibration=calibration,
    )  # fmt: skip
    backends._embedded = {name: Embedded(queries, corpus, 0.0) for name, (queries, corpus) in vectors.items()}
    return backends


def test_the_fastest_runtime_that_searches_like_fp32_and_is_faster_wins():
    noisy = CORPUS + RNG.normal(scale=0.5, size=CORPUS.shape)  # reorders the top-10
    alike = (QUERIES, CORPUS)
    backends = backends_measured(**{"torch": alike, "torch-bf16": alike, "onnx": alike, "onnx-int8": (QUERIES, noisy)})
    timings = {"torch-bf16": 0.6, "onnx": 0.95, "onnx-int8": 0.3}  # against fp32's 1.0
    choice = backends._choose(timings, 1.0, "a CPU")
    assert choice.backend == "torch-bf16"  # int8 is faster but searches otherwise; onnx searches alike but is slower
    assert "onnx-int8: top-10 overlap" in choice.reason and "0.30x fp32's time" in choice.reason
    assert backends._choose({"onnx": 0.95}, 1.0, "a CPU").backend == "torch"  # alike but not 0.9x: not worth it


def test_a_pair_is_judged_by_the_reader_queries_on_the_writer_vectors():
    shuffled = CORPUS[::-1]  # other vectors for the same ids: another writer's collection that searches otherwise
    backends = backends_measured(torch=(QUERIES, CORPUS), **{"onnx": (QUERIES, shuffled)})
    assert backends._agreement("torch", "torch").passes
    assert not backends._agreement("torch", "onnx").passes
    assert backends._agreement("onnx", "torch").passes  # onnx's queries are fp32's here
