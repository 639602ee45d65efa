#!/usr/bin/env bash
# The main job: set up, ingest a small SciFact corpus into the embedded Chroma store, run two-stage queries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# No model hub on this machine: use the local models beside the checkout when they are there.
# Elsewhere the defaults (hub ids) apply; any TWOSTAGE_* variable you set wins.
shared="$(cd .. && pwd)/shared"
if [ -d "$shared/models" ]; then
    export TWOSTAGE_EMBED_MODEL="${TWOSTAGE_EMBED_MODEL:-$shared/models/all-MiniLM-L6-v2}"
    export TWOSTAGE_RERANK_MODEL="${TWOSTAGE_RERANK_MODEL:-$shared/models/twostage-test-reranker}"
fi
export TWOSTAGE_DEMO_DATA="${TWOSTAGE_DEMO_DATA:-$shared/data/scifact}"
exec .venv/bin/python examples/demo.py "$@"
