"""``rerank_backend="auto"``: the fastest backend that still ranks like fp32, on the machine it runs on.

Reduced precision is a large speed-up where the hardware computes it natively (fp16 on CUDA; bf16 on CPUs with
AVX512-BF16 or AMX; int8 on any x86 CPU, fastest with VNNI), none or a loss elsewhere, and it can reorder candidates
whose scores nearly tie. So ``auto`` tries the candidates the device offers (its native half precision; on a CPU
also the fused ONNX graph at fp32 and at dynamic int8 when the ``onnx`` extra is installed, and that graph on
OpenVINO, at fp32 and, where bf16 is native, at bf16, when the ``openvino`` extra is) on a small calibration set
shipped with the package (see :mod:`~llama_index_twostage.stage2.calibration`: 6 queries x 16 passages), ranked
with each and with fp32, and keeps the fastest that ranks like fp32 (every query the same top-1, a mean top-10 set
overlap of at least 0.98) and takes at most 0.9x fp32's time. Otherwise fp32. Time is measured on the passages
lengthened to a real candidate's length: the short ones ordered backends unlike SciFact's abstracts on a Xeon.
README "Performance" has what it chose on measured machines.

OpenVINO's static int8 (``openvino-int8``) is not tried: this set cannot judge it. On it, int8 ranked exactly like fp32
(top-10 overlap 1.000, 6/6), while on SciFact's 200-word candidates it lost the ranking (0.930, same top-1 9/10); the
short passages do not exercise the long inputs where int8's fixed scales cost most. Lengthened passages cannot
judge it either: they nearly tie by construction (:mod:`~llama_index_twostage.stage2.calibration`).

The decision costs one calibration per backend (plus the one-time ONNX export and quantization when int8 is tried)
the first time a model is loaded on a machine; it is stored in ``model_cache_dir`` by model weights, device,
hardware, candidates, calibration set and torch version, so later processes reuse it without scoring anything. An
explicit backend is always used as given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llama_index_twostage.stage2.backends import (
    OPENVINO_PRECISIONS,
    DecisionFile,
    RerankBackend,
    installed,
    weights_fingerprint,
)
from llama_index_twostage.stage2.calibration import Pairs, calibration_set, lengthened_set

logger = logging.getLogger(__name__)

DECISIONS_FILE = "auto-backend.json"
TOP_N = 10
MIN_TOP_OVERLAP = 0.98
MAX_TIME_RATIO = 0.9
"""A candidate (half precision or int8) must take at most this share of fp32's time on the calibration pairs to be
worth its risk to the ranking."""
ONNX_CANDIDATES: tuple[RerankBackend, ...] = ("onnx", "onnx-int8")
"""What ``auto`` tries on a CPU where the ``onnx`` extra is installed: the fused fp32 graph (fp32's ranking, faster
than torch fp32) and dynamic int8 pair by pair (the fastest; static int8 was both slower and further from fp32's
ranking, README "Performance")."""


_EXTRAS: dict[str, tuple[str, ...]] = {"onnx": ONNX_CANDIDATES, "openvino": tuple(OPENVINO_PRECISIONS)}


def untried_extras(device: str, candidates: Sequence[str]) -> str:
    """The end of ``auto``'s reason on a CPU whose ``candidates`` lack an extra's backends (it is not installed): which
    extras and the command that adds them, since a plain install never tries them. Empty where nothing is missing."""
    missing = [extra for extra, backends in _EXTRAS.items() if not set(backends) & set(candidates)]
    if device != "cpu" or not missing:
        return ""
    return f"; not tried, not installed: the {' and '.join(missing)} extra ({install_command(missing)})"


def install_command(extras: Sequence[str]) -> str:
    return f'pip install "llama-index-twostage[{",".join(extras)}]"'


def openvino_candidates(native_bf16: bool) -> tuple[RerankBackend, ...]:
    """What ``auto`` tries on a CPU where the ``openvino`` extra is installed: fp32, and bf16 too where the CPU has
    bf16 instructions. Native bf16 is not always the faster: on an AMD EPYC (Zen 4) OpenVINO bf16 reranked at 0.53x
    fp32's time, on a Xeon with AVX512-BF16 but no AMX at 1.63x, where OpenVINO fp32 was the fastest bi-encoder
    runtime (README "Performance")."""
    return ("openvino-bf16", "openvino") if native_bf16 else ("openvino",)


Score = Callable[[str, list[str]], list[float]]


@dataclass(frozen=True)
class BackendChoice:
    """The backend ``auto`` chose and why, for logs, ``twostage info`` and each result's metadata."""

    backend: RerankBackend
    reason: str


@dataclass(frozen=True)
class Agreement:
    """How a backend's rankings compare with fp32's on the calibration queries."""

    top_overlap: float
    same_top1: int
    queries: int

    @property
    def passes(self) -> bool:
        return self.top_overlap >= MIN_TOP_OVERLAP and self.same_top1 == self.queries

    def __str__(self) -> str:
        return f"top-{TOP_N} overlap {self.top_overlap:.3f}, same top-1 {self.same_top1}/{self.queries}"


def agreement(reference: Sequence[Sequence[float]], candidate: Sequence[Sequence[float]]) -> Agreement:
    """Mean top-10 set overlap and same-top-1 count of ``candidate``'s rankings against ``reference``'s."""

    def best(scores: Sequence[float]) -> list[int]:
        return sorted(range(len(scores)), key=lambda index: -scores[index])[:TOP_N]

    overlaps, same = [], 0
    for expected, got in zip(reference, candidate, strict=True):
        top_expected, top_got = best(expected), best(got)
        overlaps.append(len(set(top_expected) & set(top_got)) / len(top_expected))
        same += top_expected[0] == top_got[0]
    return Agreement(sum(overlaps) / len(overlaps), same, len(overlaps))


def resolved_device(device: str | None) -> str:
    """The device a model lands on when ``device`` is unset, as sentence-transformers picks it."""
    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def read_cpu() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (Linux ``/proc/cpuinfo``; elsewhere the platform name, no flags)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return fields.get("model name", platform.machine()), frozenset(fields.get("flags", "").split())


@dataclass(frozen=True)
class Hardware:
    """Where a model runs: the device, and the name and feature flags of its CPU or the name of its GPU."""

    device: str
    name: str
    flags: frozenset[str] = frozenset()

    @classmethod
    def detect(cls, device: str | None = None) -> Hardware:
        """This machine's hardware for ``device`` (unset: where sentence-transformers would load the model)."""
        device = resolved_device(device)
        if device.startswith("cuda"):
            return cls(device, torch.cuda.get_device_name(device))
        return cls(device, *read_cpu())

    def native_half_precision(self) -> tuple[RerankBackend | None, str]:
        """The half-precision backend this hardware computes natively, if any, and what was found."""
        if self.device.startswith("cuda"):
            return "torch-fp16", f"CUDA ({self.name})"
        if self.device != "cpu":
            return None, f"device {self.device}"
        native = sorted(self.flags & {"avx512_bf16", "amx_bf16"})
        return ("torch-bf16" if native else None), f"{self.name} ({', '.join(native) or 'no AVX512-BF16 or AMX'})"


def candidate_backends(hardware: Hardware, onnx: bool, openvino: bool = False) -> tuple[list[RerankBackend], str]:
    """What ``auto`` may try on ``hardware`` besides fp32: its native half precision, and on a CPU the ONNX
    backends of :data:`ONNX_CANDIDATES` where the ``onnx`` extra is installed (``onnx``) and those of
    :func:`openvino_candidates` where the ``openvino`` extra is (``openvino``). Also returns what was found, for the
    reason."""
    half, found = hardware.native_half_precision()
    candidates: list[RerankBackend] = [half] if half else []
    if hardware.device == "cpu" and onnx:
        candidates.extend(ONNX_CANDIDATES)
    if hardware.device == "cpu" and openvino:
        candidates.extend(openvino_candidates(half is not None))
    return candidates, found


@dataclass(frozen=True)
class Trial:
    """One candidate backend on the calibration set."""

    backend: RerankBackend
    agreement: Agreement
    time_ratio: float

    @property
    def earns_its_place(self) -> bool:
        return self.agreement.passes and self.time_ratio <= MAX_TIME_RATIO

    def __str__(self) -> str:
        return f"{self.backend}: {self.agreement}, {self.time_ratio:.2f}x fp32's time"


def calibrate(
    fp32: Score,
    candidates: dict[RerankBackend, Score],
    hardware: str,
    pairs: Pairs,
    clock: Callable[[], float] = time.perf_counter,
) -> BackendChoice:
    """Rank ``pairs`` with fp32 and each candidate, then time each on the pairs lengthened (ranking warmed it up),
    by ``clock``; keep the fastest candidate that ranks like fp32 and is faster, else fp32."""
    timing = lengthened_set(pairs)

    def ranked_and_timed(score: Score) -> tuple[list[list[float]], float]:
        scores = [score(query, list(passages)) for query, passages in pairs]
        start = clock()
        for query, passages in timing:
            score(query, passages)
        return scores, clock() - start

    reference, fp32_s = ranked_and_timed(fp32)
    trials = []
    for backend, score in candidates.items():
        scores, seconds = ranked_and_timed(score)
        trials.append(Trial(backend, agreement(reference, scores), seconds / fp32_s))
    measured = "; ".join(str(trial) for trial in trials)
    earning = [trial for trial in trials if trial.earns_its_place]
    if not earning:
        return BackendChoice("torch", f"fp32: nothing faster ranks like it on {hardware} ({measured})")
    best = min(earning, key=lambda trial: trial.time_ratio)
    return BackendChoice(best.backend, f"{best.backend}: fastest that ranks like fp32 on {hardware} ({measured})")


@dataclass(frozen=True)
class AutoBackend:
    """The ``auto`` choice for one device, holding what it depends on: the hardware, the candidates tried, the
    calibration pairs and the clock that times them. :meth:`detect` finds them on this machine; tests pass them."""

    hardware: Hardware
    candidates: tuple[RerankBackend, ...]
    pairs: Pairs
    clock: Callable[[], float] = time.perf_counter

    @classmethod
    def detect(cls, device: str | None = None) -> AutoBackend:
        hardware = Hardware.detect(device)
        candidates, _ = candidate_backends(hardware, installed("onnx"), installed("openvino"))
        return cls(hardware, tuple(candidates), calibration_set())

    def choose(self, model: str, cache_dir: Path, scorer_of: Callable[[RerankBackend], Score]) -> BackendChoice:
        """The backend for ``model``: a stored decision, else one calibration (stored for next time).

        ``scorer_of(backend)`` loads the model on a backend and returns its scoring function.
        """
        _, found = self.hardware.native_half_precision()
        device = self.hardware.device
        untried = untried_extras(device, self.candidates)
        if not self.candidates:
            return BackendChoice("torch", f"fp32: no native half precision on {found}{untried}")
        calibration = json.dumps([self.pairs, lengthened_set(self.pairs)])  # what it ranks and what it times
        pairs = hashlib.sha256(calibration.encode()).hexdigest()[:8]  # a changed set decides anew
        key = "|".join([weights_fingerprint(model), device, found, ",".join(self.candidates), pairs, torch.__version__])
        decisions = DecisionFile(Path(cache_dir).expanduser() / DECISIONS_FILE, "the rerank_backend auto decision")
        stored = decisions.get(key)
        if stored is not None:
            return BackendChoice(**stored)
        logger.info("rerank_backend auto: calibrating %s on %s (once per model and machine)", self.candidates, found)
        fp32 = scorer_of("torch")
        scorers = {backend: scorer_of(backend) for backend in self.candidates}
        calibrated = calibrate(fp32, scorers, found, self.pairs, self.clock)
        choice = BackendChoice(calibrated.backend, calibrated.reason + untried)
        decisions.put({key: asdict(choice)})
        return choice


def choose_backend(
    model: str, device: str | None, cache_dir: Path, scorer_of: Callable[[RerankBackend], Score]
) -> BackendChoice:
    """``auto``'s backend for ``model`` on ``device`` of this machine (see :class:`AutoBackend`)."""
    return AutoBackend.detect(device).choose(model, cache_dir, scorer_of)
