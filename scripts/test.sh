#!/usr/bin/env bash
# Set up and run the whole test suite (unit, integration with real models, Chroma and an Infinity rerank server,
# notebooks). `--quick`: the tier to run before each commit (no server processes, no SciFact embedding, no notebooks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--quick" ]; then  # before each commit: every module, without the full_suite tests (conftest.py)
    shift
    exec .venv/bin/python -m pytest -q -p no:cacheprovider -m "not full_suite" --durations=10 tests "$@"
fi
bash scripts/setup_infinity.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
