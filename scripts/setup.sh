#!/usr/bin/env bash
# Create ./.venv and install the package with its test extras. Safe to re-run: skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.twostage-installed
wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    # The constraints file pins the CPU build of torch (an unpinned torch pulls several GB of CUDA packages).
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
    echo "$wanted" > "$stamp"
fi

# The evaluation report's test opens the HTML page in a real headless browser: Debian's chromium, installed once.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (apt-get) for the HTML report test"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
