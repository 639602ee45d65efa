#!/usr/bin/env bash
# Create ./.venv-infinity with the Infinity rerank server (the HTTP scorer's tests and benchmark start it). Its own
# virtualenv: infinity-emb pins sentence-transformers < 4. Safe to re-run: skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
[ -x .venv-infinity/bin/python ] || "$PYTHON" -m venv .venv-infinity

stamp=.venv-infinity/.twostage-installed
wanted=$(cat constraints.txt scripts/infinity-requirements.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    # torch first, from the constraints file: an unpinned torch pulls several GB of CUDA packages.
    .venv-infinity/bin/python -m pip install --quiet --upgrade pip
    .venv-infinity/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
    .venv-infinity/bin/python -m pip install --quiet -c constraints.txt -r scripts/infinity-requirements.txt
    echo "$wanted" > "$stamp"
fi
