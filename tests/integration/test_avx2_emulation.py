"""``benchmarks/cpu_isa/as_avx2.sh``, which the README's AVX2 figures were measured with: under it a process sees an
AVX2-only CPU (CPUID and /proc/cpuinfo alike), so torch and OpenVINO pick their AVX2 kernels and ``auto`` offers
what it offers on such a CPU. Runs a real child process; skipped where the CPU already lacks AVX-512 (nothing to
hide) or cannot make CPUID fault."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from support import REPO

from llama_index_twostage.stage2.auto import read_cpu

AS_AVX2 = REPO / "benchmarks" / "cpu_isa" / "as_avx2.sh"

PROBE = """
import json, openvino, torch
from llama_index_twostage.stage2.auto import Hardware, candidate_backends, read_cpu
hardware = Hardware.detect("cpu")
print(json.dumps({
    "torch_kernels": torch.backends.cpu.get_cpu_capability(),
    "openvino": openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
    "flags": sorted(read_cpu()[1]),
    "candidates": candidate_backends(hardware, onnx=True, openvino=True)[0],
}))
"""


def probe(*wrapper: str) -> dict:
    done = subprocess.run([*wrapper, sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_as_avx2_hides_avx512_from_the_libraries_and_from_auto():
    _, flags = read_cpu()
    if "avx512f" not in flags or "cpuid_fault" not in flags or shutil.which("cc") is None:
        pytest.skip("needs a CPU with AVX-512 and CPUID faulting, and a C compiler")
    native, emulated = probe(), probe("bash", str(AS_AVX2))
    assert native["torch_kernels"].startswith("AVX512") and not emulated["torch_kernels"].startswith("AVX512")
    assert emulated["torch_kernels"] == "AVX2"
    assert not [flag for flag in emulated["flags"] if flag.startswith(("avx512", "amx")) or flag == "avx_vnni"]
    assert {"avx2", "fma"} <= set(emulated["flags"])
    assert set(emulated["flags"]) < set(native["flags"])  # only hidden, nothing added
    assert "BF16" not in emulated["openvino"] and "FP32" in emulated["openvino"]
    assert emulated["candidates"] == ["onnx", "onnx-int8", "openvino"]  # no bf16 where it is not native


def test_as_avx2_refuses_to_run_without_a_command():
    done = subprocess.run(["bash", str(AS_AVX2)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 64 and "usage" in done.stderr
