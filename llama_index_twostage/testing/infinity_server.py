"""A real Infinity rerank server (``infinity_emb v2``) on loopback, serving a local cross-encoder directory offline:
for the HTTP scorer's tests and benchmarks (see :class:`LocalServer` for crashes and restarts on the same port).

Infinity pins sentence-transformers < 4, so it lives in its own virtualenv (``scripts/setup.sh`` creates
``.venv-infinity``); pass its ``infinity_emb`` executable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from llama_index_twostage.testing.local_server import LocalServer

OFFLINE = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


class LocalInfinityServer(LocalServer):
    """``infinity_emb v2 --model-id MODEL_DIR --served-model-name NAME --engine torch --device cpu`` on loopback.

    Args:
        executable: the ``infinity_emb`` of its virtualenv.
        model_dir: a local sentence-transformers cross-encoder directory.
        log_dir: where the server's output goes (``infinity-<port>.log``).
        served_model_name: the ``model`` a request names.
        api_key: when set, the server refuses requests without this bearer token.
        warmup: Infinity's model warm-up (about 20 s on 2 cores); off, the first requests pay it.
    """

    name = "infinity_emb"
    log_prefix = "infinity"

    def __init__(
        self,
        executable: Path,
        model_dir: Path,
        log_dir: Path,
        *,
        served_model_name: str = "reranker",
        api_key: str | None = None,
        warmup: bool = False,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(log_dir, port, host)
        self.executable, self.model_dir = Path(executable).absolute(), Path(model_dir).absolute()
        self.served_model_name, self.api_key, self.warmup = served_model_name, api_key, warmup

    @property
    def rerank_url(self) -> str:
        return f"{self.url}/rerank"

    def command(self) -> list[str]:
        if not self.executable.is_file():
            raise RuntimeError(f"{self.executable} is missing: `bash scripts/setup.sh` creates .venv-infinity")
        command = [str(self.executable), "v2", "--model-id", str(self.model_dir)]
        command += ["--served-model-name", self.served_model_name, "--engine", "torch", "--device", "cpu"]
        command += ["--no-trust-remote-code", "--host", self.host, "--port", str(self.port)]
        command += ["--model-warmup" if self.warmup else "--no-model-warmup"]
        return command + (["--api-key", self.api_key] if self.api_key else [])

    def health_url(self) -> str:
        return f"{self.url}/health"

    def environment(self) -> Mapping[str, str]:
        return OFFLINE

    def working_dir(self) -> Path:
        return self.log_path.parent  # Infinity writes its .infinity_cache there
