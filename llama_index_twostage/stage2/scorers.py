"""What scores (query, text) pairs for the reranker: the ``PairScorer`` protocol and the local cross-encoder.

The reranker needs three things from a scorer: the scores of one query against many texts, a key that names
everything that changes a score (so cached scores of different models, precisions or windows never mix), and,
where the scorer knows its tokenizer, a :class:`TokenWindow` that counts the pairs it must truncate. Any object
with these (a local model, a rerank server, a test double) can rank.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from llama_index_twostage.models import ModelPool, load_or_explain
from llama_index_twostage.settings import RerankBackend, RetrieverSettings
from llama_index_twostage.stage2 import backends
from llama_index_twostage.stage2.caches import LruCache, compute_through, content_hash

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

DEFAULT_MODEL_CACHE: Path = RetrieverSettings.model_fields["model_cache_dir"].default
TOKEN_COUNT_CACHE_SIZE = 200_000  # about 100 bytes an entry: 20 MB at most


class TokenWindow:
    """How many (query, text) pairs exceed a cross-encoder's window and lose tokens to truncation.

    A pair's length is its query's tokens, its text's and the tokenizer's special tokens. Text counts are kept in a
    bounded cache this window owns, so a candidate is tokenized for counting once, not on every query (the model's
    own tokenization happens only for pairs the score cache does not answer).
    """

    def __init__(self, tokenizer: Any, max_tokens: int, cache_size: int = TOKEN_COUNT_CACHE_SIZE) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.token_counts = LruCache[str, int](cache_size)

    def _count(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def count_truncated(self, query: str, texts: Sequence[str]) -> int:
        if not texts:
            return 0
        room = self.max_tokens - self.tokenizer.num_special_tokens_to_add(pair=True) - self._count([query])[0]
        keys = [content_hash(text) for text in texts]
        counts, _ = compute_through(self.token_counts, keys, texts, self._count)
        return sum(tokens > room for tokens in counts)


@runtime_checkable
class PairScorer(Protocol):
    """Scores (query, text) pairs for :class:`~llama_index_twostage.stage2.rerank.CrossEncoderRerank`."""

    @property
    def name(self) -> str:
        """The model's name, for events and messages."""
        ...

    @property
    def cache_key(self) -> Hashable:
        """Everything that changes a score (model, precision, window, activation); equal keys, equal scores."""
        ...

    @property
    def window(self) -> TokenWindow | None:
        """The token window, for the truncation report; None when the scorer does not know its tokenizer."""
        ...

    def score(self, query: str, texts: list[str]) -> list[float]:
        """One float per text, in order; higher is more relevant."""
        ...


class CrossEncoderScorer:
    """A sentence-transformers ``CrossEncoder`` (any backend of :mod:`~llama_index_twostage.stage2.backends`).

    Scores are exactly ``CrossEncoder.predict``'s for the same pairs (which sorts pairs by length, so batches pad
    little), as Python floats; with ``normalize`` a model that outputs logits gets a sigmoid.

    Args:
        cross_encoder: the loaded model (see :meth:`load`).
        name: the model's hub id or directory, as given to the loader.
        backend: the runtime it was loaded on; part of the cache key (precision changes scores).
    """

    def __init__(
        self,
        cross_encoder: CrossEncoder,
        *,
        name: str,
        backend: RerankBackend = "torch",
        normalize: bool = False,
        batch_size: int = 32,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.cross_encoder = cross_encoder
        self._name = name
        self.backend = backend
        self.normalize = normalize
        self.batch_size = batch_size
        self._window = TokenWindow(cross_encoder.tokenizer, cross_encoder.max_seq_length)

    @classmethod
    def load(
        cls,
        model: str,
        *,
        backend: RerankBackend = "torch",
        max_length: int | None = None,
        device: str | None = None,
        normalize: bool = False,
        batch_size: int = 32,
        trust_remote_code: bool = False,
        cache_dir: Path = DEFAULT_MODEL_CACHE,
        pool: ModelPool | None = None,
    ) -> CrossEncoderScorer:
        """Load ``model`` (hub id or local directory) on ``backend``; through ``pool`` it is loaded once per pool."""
        key = ("cross-encoder", model, device, max_length, trust_remote_code, backend, Path(cache_dir))

        def load() -> CrossEncoder:
            return load_cross_encoder(model, device, max_length, trust_remote_code, backend, Path(cache_dir))

        cross_encoder = pool.get(key, load) if pool is not None else load()
        return cls(cross_encoder, name=model, backend=backend, normalize=normalize, batch_size=batch_size)

    @property
    def name(self) -> str:
        return self._name

    @property
    def cache_key(self) -> tuple[str, str, int, bool]:
        """What changes a score: model, backend (precision), window and activation; not device or batch size."""
        return (self._name, self.backend, self.cross_encoder.max_seq_length, self.normalize)

    @property
    def window(self) -> TokenWindow:
        return self._window

    def score(self, query: str, texts: list[str]) -> list[float]:
        activation = None
        if self.normalize and isinstance(self.cross_encoder.activation_fn, torch.nn.Identity):
            activation = torch.nn.Sigmoid()
        scores = self.cross_encoder.predict(
            [(query, text) for text in texts],
            batch_size=self.batch_size,
            activation_fn=activation,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(value) for value in scores]

    def __repr__(self) -> str:
        return f"CrossEncoderScorer({self._name!r}, backend={self.backend!r}, window={self._window.max_tokens})"


def load_cross_encoder(
    model: str,
    device: str | None,
    max_length: int | None,
    trust_remote_code: bool,
    backend: RerankBackend,
    cache_dir: Path,
) -> CrossEncoder:
    """A sentence-transformers ``CrossEncoder`` on ``backend``; a failure is a ``ModelLoadError`` that says why.

    ONNX backends export to ``cache_dir`` once (see :mod:`~llama_index_twostage.stage2.backends`); a missing
    optional package fails here, before any loading, with the extra that installs it.
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
            backends.use_onnx(cross_encoder, model, backend, cache_dir, device)
        return cross_encoder

    return load_or_explain("rerank_model", model, load)
