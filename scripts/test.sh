#!/usr/bin/env bash
# Set up and run the whole test suite (unit, integration with real models and Chroma, notebooks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
