#!/usr/bin/env bash
# Run a command as if this CPU were AVX2-only (AVX-512, AVX-VNNI and AMX hidden; see hide_avx512.c), e.g.
#   bash benchmarks/cpu_isa/as_avx2.sh .venv/bin/python benchmarks/bench_rerank.py --peers stock
# Needs a C compiler and a CPU/kernel with CPUID faulting (`grep -w cpuid_fault /proc/cpuinfo`). Nothing is written
# outside a temporary folder, removed on exit. Do not run the command under `python -X faulthandler`.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 64; }
grep -qw cpuid_fault /proc/cpuinfo || { echo "as_avx2: this CPU or kernel has no cpuid_fault" >&2; exit 70; }
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cc -O2 -Wall -shared -fPIC -o "$build/hide_avx512.so" "$(dirname "$0")/hide_avx512.c"
echo "as_avx2: AVX-512, AVX-VNNI and AMX hidden from CPUID and /proc/cpuinfo (an emulated AVX2-only CPU)" >&2
LD_PRELOAD="$build/hide_avx512.so${LD_PRELOAD:+:$LD_PRELOAD}" "$@"
