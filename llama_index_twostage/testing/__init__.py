"""Testing support, not runtime: a real ``chroma run`` on loopback for tests, benchmarks and notebooks.

Nothing in the library imports this package; it ships so that notebooks and benchmarks can start a server the way
the tests do.
"""

from llama_index_twostage.testing.chroma_server import LocalChromaServer, chroma_executable, free_port

__all__ = ["LocalChromaServer", "chroma_executable", "free_port"]
