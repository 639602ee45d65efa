"""The test suite's loopback servers (``tests/servers.py``: ``chroma run``, Infinity), for benchmarks run from a
checkout; they are test support, not part of the installed package."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import LocalChromaServer, LocalInfinityServer  # noqa: E402

__all__ = ["LocalChromaServer", "LocalInfinityServer"]
