"""The models' owner: a ``ModelPool`` loads each model once, on first request, thread-safely, with errors that say why.

Models are the heavy state of the pipeline. A pool is held by whoever builds components (the factory in
:mod:`llama_index_twostage.pipeline`): every retriever, reranker and ingestion it builds with equal model options
gets the same instance, so a service that builds a query engine per request still loads each model once. Sharing
is explicit: pass the same pool to share, a new one not to.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from llama_index_twostage.errors import ModelLoadError
from llama_index_twostage.store.contract import CollectionContract, DistanceSpace

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding


def looks_like_local_path(model: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else path-shaped is meant as a local directory."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_CACHE_DIR = Path("./.twostage/models")  # where exports and runtime decisions are kept, unless set
_BACKEND_OF_DTYPE = {"torch.float32": "torch", "torch.bfloat16": "torch-bf16", "torch.float16": "torch-fp16"}

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


@runtime_checkable
class Closeable(Protocol):
    """What holds more than memory (connections) and must be closed by its owner."""

    def close(self) -> None: ...


class ModelPool:
    """Loaded models by key; each loaded once, concurrent first requests waiting for the one load."""

    def __init__(self) -> None:
        self._models: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The model held under ``key``, loading it with ``load`` on first request."""
        with self._lock:
            if key in self._models:
                return self._models[key]  # type: ignore[no-any-return]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                self._models[key] = load()
            return self._models[key]  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._models)

    def close(self) -> None:
        """Drop every model (their memory goes once no component holds them) and close those that hold connections
        (a rerank server's scorer and its HTTP clients)."""
        with self._lock:
            held = list(self._models.values())
            self._models.clear()
            self._locks.clear()
        for model in held:
            if isinstance(model, Closeable):
                model.close()


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


def sentence_transformer_of(embed_model: BaseEmbedding) -> Any | None:
    """The SentenceTransformer behind a ``HuggingFaceEmbedding`` or a subclass (for its tokenizer and runtime), else
    None (hosted embeddings). LlamaIndex offers no public route to it, so this is the one place that reads its
    ``_model``, without a default: should LlamaIndex rename it, this fails loudly instead of silently dropping the
    truncation warnings (``test_models`` checks it)."""
    is_hugging_face = any(cls.__name__ == "HuggingFaceEmbedding" for cls in type(embed_model).__mro__)
    return embed_model._model if is_hugging_face else None  # type: ignore[attr-defined]


def counting_tokenizer(tokenizer: T) -> T:
    """A copy of a model's tokenizer, for counting tokens beside the model.

    A fast tokenizer keeps padding and truncation as state that each call sets: counting (no padding) with the
    model's own tokenizer in one thread drops the padding of a batch the model is tokenizing in another, which then
    fails ("Unable to create tensor"). A copy (about 30 ms, once per owner) shares no state with the model's.
    """
    return copy.deepcopy(tokenizer)


def query_tokenizer_of(embed_model: BaseEmbedding) -> Any | None:
    """A :func:`counting_tokenizer` of the bi-encoder behind ``embed_model``, for the query length check; None for
    an embedding whose tokenizer is not known here (a hosted API)."""
    bi_encoder = sentence_transformer_of(embed_model)
    return counting_tokenizer(bi_encoder.tokenizer) if bi_encoder is not None else None


def embedding_model_name(embed_model: BaseEmbedding) -> str:
    """The name a collection's contract records for this embedding."""
    return str(getattr(embed_model, "model_name", None) or type(embed_model).__name__)


def embedding_backend(embed_model: BaseEmbedding) -> str | None:
    """The runtime of a bi-encoder, which a collection records: the library's own embedding says it; any other
    ``HuggingFaceEmbedding`` runs torch at its weights' dtype; other embeddings (hosted APIs) are not known (None)."""
    recorded = getattr(embed_model, "embed_backend", None)
    if recorded is not None:
        return str(recorded)
    encoder = sentence_transformer_of(embed_model)
    parameter = next(encoder.parameters(), None) if encoder is not None else None
    return _BACKEND_OF_DTYPE.get(str(parameter.dtype)) if parameter is not None else None


def embedding_contract(embed_model: BaseEmbedding, space: DistanceSpace = "cosine") -> CollectionContract:
    """What a collection written by this bi-encoder records (model, dimension, space, runtime), with the
    bi-encoder's judge of another runtime's vectors (:meth:`BackendEmbedding.tolerance`) where it has one."""
    return CollectionContract(
        embedding_model_name(embed_model),
        embedding_dimension(embed_model),
        space,
        embedding_backend(embed_model),
        getattr(embed_model, "tolerance", None),
    )


def embedding_dimension(embed_model: BaseEmbedding) -> int:
    """Vector size of the bi-encoder (a hosted model is asked with one probe text)."""
    model = sentence_transformer_of(embed_model)
    if model is not None:
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(dimension())
    return len(embed_model.get_text_embedding("dimension probe"))
