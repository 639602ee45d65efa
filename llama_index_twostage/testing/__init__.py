"""Testing support, not runtime: real servers on loopback (``chroma run``, an Infinity rerank server) for tests,
benchmarks and notebooks.

Nothing in the library imports this package; it ships so that notebooks and benchmarks can start a server the way
the tests do.
"""

from llama_index_twostage.testing.chroma_server import LocalChromaServer, chroma_executable
from llama_index_twostage.testing.infinity_server import LocalInfinityServer
from llama_index_twostage.testing.local_server import LocalServer, free_port

__all__ = ["LocalChromaServer", "LocalInfinityServer", "LocalServer", "chroma_executable", "free_port"]
