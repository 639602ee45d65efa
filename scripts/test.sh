#!/usr/bin/env bash
# Set up and run the whole test suite (unit, integration with real models, Chroma and an Infinity rerank server,
# notebooks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_infinity.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
