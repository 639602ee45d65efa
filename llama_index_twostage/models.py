"""Loading the bi-encoder and the cross-encoder: once per process, lazily, thread-safely, with errors that say why.

Models are the heavy state of the pipeline. Every retriever and reranker built from equal settings shares one
instance through :func:`shared_model`, so a web service that builds a query engine per request still loads each
model once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index_twostage import backends
from llama_index_twostage.errors import ModelLoadError
from llama_index_twostage.settings import RerankBackend, RetrieverSettings

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MODEL_CACHE: Path = RetrieverSettings.model_fields["model_cache_dir"].default

_models: dict[Hashable, Any] = {}
_locks: dict[Hashable, threading.Lock] = {}
_registry_lock = threading.Lock()

# Messages of errors raised when the hub cannot be reached, across huggingface_hub, httpx and requests versions.
_OFFLINE_MARKERS = (
    "offline",
    "couldn't connect",
    "could not connect",
    "connection error",
    "connecterror",
    "name resolution",
    "max retries exceeded",
    "localentrynotfound",
)


def shared_model(key: Hashable, load: Callable[[], T]) -> T:
    """Return the model cached under ``key``, loading it on first use; concurrent callers wait for one load."""
    with _registry_lock:
        if key in _models:
            return _models[key]
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if key not in _models:
            _models[key] = load()
        return _models[key]


def _hub_was_unreachable(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        text = f"{type(seen).__name__} {seen}".lower()
        if any(marker in text for marker in _OFFLINE_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def load_or_explain(field: str, name: str, load: Callable[[], T]) -> T:
    """Run ``load``; turn any failure into a :class:`ModelLoadError` naming the setting, the model and the cause."""
    try:
        return load()
    except Exception as error:
        hint = (
            " The model hub was unreachable (offline or blocked): download the model where the hub is reachable "
            f"and point {field} at its local directory, or set HF_HUB_OFFLINE=1 to use the local cache."
            if _hub_was_unreachable(error)
            else ""
        )
        raise ModelLoadError(f"could not load {field} {name!r}: {type(error).__name__}: {error}.{hint}") from error


def load_embedding(model: str, *, device: str | None, batch_size: int, trust_remote_code: bool) -> BaseEmbedding:
    """The stage-1 bi-encoder as a LlamaIndex ``HuggingFaceEmbedding`` (normalised vectors), shared per process."""

    def load() -> BaseEmbedding:
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        logger.info("loading embedding model %s", model)
        return HuggingFaceEmbedding(
            model_name=model,
            device=device,
            embed_batch_size=batch_size,
            trust_remote_code=trust_remote_code,
            normalize=True,
        )

    key = ("embedding", model, device, batch_size, trust_remote_code)
    return shared_model(key, lambda: load_or_explain("embed_model", model, load))


def load_cross_encoder(
    model: str,
    *,
    device: str | None,
    max_length: int | None,
    trust_remote_code: bool,
    backend: RerankBackend = "torch",
    cache_dir: Path | None = None,
) -> CrossEncoder:
    """The stage-2 sentence-transformers ``CrossEncoder`` on ``backend``, shared per process.

    ONNX backends export to ``cache_dir`` once (see :mod:`llama_index_twostage.backends`); a missing optional
    package fails here, before any loading, with the extra that installs it.
    """

    def load() -> CrossEncoder:
        from sentence_transformers import CrossEncoder

        if backends.is_onnx(backend):
            backends.require_onnx(backend)
        logger.info("loading cross-encoder %s (%s backend)", model, backend)
        cross_encoder = CrossEncoder(
            model,
            device="cpu" if backends.is_onnx(backend) else device,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            model_kwargs=backends.torch_model_kwargs(backend),
        )
        if backends.is_onnx(backend):
            backends.use_onnx(cross_encoder, model, backend, cache_dir or DEFAULT_MODEL_CACHE, device)
        return cross_encoder

    key = ("cross-encoder", model, device, max_length, trust_remote_code, backend, cache_dir)
    return shared_model(key, lambda: load_or_explain("rerank_model", model, load))


def sentence_transformer_of(embed_model: BaseEmbedding) -> Any | None:
    """The SentenceTransformer behind a ``HuggingFaceEmbedding`` (for its tokenizer and window), else None."""
    return getattr(embed_model, "_model", None) if type(embed_model).__name__ == "HuggingFaceEmbedding" else None
