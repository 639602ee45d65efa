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
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import numpy as np
import torch

from llama_index_twostage.errors import ModelOutputError
from llama_index_twostage.models import DEFAULT_CACHE_DIR, ModelPool, counting_tokenizer, load_or_explain
from llama_index_twostage.stage2 import backends
from llama_index_twostage.stage2.auto import BackendChoice, choose_backend
from llama_index_twostage.stage2.backends import BackendSetting, RerankBackend
from llama_index_twostage.stage2.caches import LruCache, compute_through, content_hash

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

TOKEN_COUNT_CACHE_SIZE = 200_000  # about 100 bytes an entry: 20 MB at most
CPU_BATCH_TOKENS = 1024
"""Tokens per batch on a CPU, padding included. A CPU gains nothing from wide batches once a batch holds a few
hundred tokens, while padding costs in full, so a batch of long candidates stays small and one of short candidates
large: fp32 0.71x stock and bf16 0.49x on SciFact candidates, against 1.00x and 0.58x in batches of 32 (README
"Performance"). Hardware-independent: it removes work, not a kernel's cost."""


class TokenWindow:
    """How many (query, text) pairs exceed a cross-encoder's window and lose tokens to truncation.

    A pair's length is its query's tokens, its text's and the tokenizer's special tokens. Text counts are kept in a
    bounded cache this window owns, so a candidate is tokenized for counting once, not on every query (the model's
    own tokenization happens only for pairs the score cache does not answer). The window counts with its own copy
    of ``tokenizer`` (see :func:`~llama_index_twostage.models.counting_tokenizer`), so counting in one thread never
    disturbs the model tokenizing a batch in another.
    """

    def __init__(self, tokenizer: Any, max_tokens: int, cache_size: int = TOKEN_COUNT_CACHE_SIZE) -> None:
        self.tokenizer = counting_tokenizer(tokenizer)
        self.max_tokens = max_tokens
        self.token_counts = LruCache[str, int](cache_size)

    def _count(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def count_truncated(self, query: str, texts: Sequence[str]) -> int:
        if not texts:
            return 0
        room = self.room(query)
        return sum(tokens > room for tokens in self._counts(texts))

    def pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """The tokens of each (query, text) pair as the model reads it: special tokens included, cut to the window."""
        query_and_specials = self.max_tokens - self.room(query)
        return [min(self.max_tokens, query_and_specials + tokens) for tokens in self._counts(texts)]

    def room(self, query: str) -> int:
        """Tokens left for the text beside ``query`` and the special tokens."""
        return self.max_tokens - self.tokenizer.num_special_tokens_to_add(pair=True) - self._count([query])[0]

    def _counts(self, texts: Sequence[str]) -> list[int]:
        keys = [content_hash(text) for text in texts]
        return compute_through(self.token_counts, keys, texts, self._count)[0]

    def split(self, query: str, texts: Sequence[str], overlap: int) -> list[list[str]]:
        """Each text as windows that fit beside ``query``: itself when it fits, else overlapping slices of whole words.

        Consecutive windows share about ``overlap`` tokens (at most half a window, so a long query cannot make the
        windows crawl). A window is a slice of the original text, so nothing is re-written, only cut.
        """
        room = self.room(query)
        windows = [[text] for text in texts]
        long = [index for index, tokens in enumerate(self._counts(texts)) if tokens > room]
        if not long or room < 2:  # the query alone fills the window: nothing fits beside it (counted as truncated)
            return windows
        encoded = self.tokenizer(
            [texts[index] for index in long], add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        for index, offsets in zip(long, encoded["offset_mapping"]):
            windows[index] = word_windows(texts[index], offsets, room, min(overlap, room // 2))
        return windows


def word_windows(text: str, offsets: Sequence[tuple[int, int]], size: int, overlap: int) -> list[str]:
    """Slices of ``text`` of at most ``size`` tokens (by the tokenizer's character ``offsets``), each starting and
    ending on a word boundary where one lies inside the window, consecutive slices sharing about ``overlap`` tokens."""
    starts_word = [i == 0 or offsets[i][0] > offsets[i - 1][1] for i in range(len(offsets))]

    def boundary_at_or_before(position: int, floor: int) -> int:
        """The last token index in (floor, position] that starts a word; ``position`` when none does."""
        return next((i for i in range(position, floor, -1) if starts_word[i]), position)

    windows, start = [], 0
    while True:
        end = len(offsets) if start + size >= len(offsets) else boundary_at_or_before(start + size, start)
        windows.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            return windows
        start = boundary_at_or_before(max(end - overlap, start + 1), start)


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


@runtime_checkable
class AsyncPairScorer(PairScorer, Protocol):
    """A scorer that can also wait for its scores without a thread (a rerank server): the reranker's async path
    awaits :meth:`ascore`; scorers without it are run in a worker thread."""

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        """:meth:`score`, awaited."""
        ...


class OutputHead:
    """One relevance score per pair from a cross-encoder's outputs, whatever their number.

    A one-output head gives its logit (or, with the model's own activation, a 0-1 score). A head with several
    outputs (e.g. two: not relevant / relevant) gives the log-odds of the relevant class, ``log p / (1 - p)`` under
    a softmax: for two outputs, ``logit[relevant] - logit[other]``. That is the one-output convention again: higher
    is more relevant, and its sigmoid is the class probability.
    """

    def __init__(self, model: str, outputs: int, relevant_class: int | None, labels: dict[int, str]) -> None:
        if relevant_class is None and outputs > 2:
            raise ModelOutputError(
                f"cross-encoder {model!r} gives {outputs} scores per pair (labels {labels or 'unnamed'}): set "
                "rerank_relevant_class to the index of the one that means 'relevant'"
            )
        if relevant_class is not None and not 0 <= relevant_class < outputs:
            raise ModelOutputError(
                f"rerank_relevant_class {relevant_class} is out of range: cross-encoder {model!r} gives {outputs} "
                f"score(s) per pair (labels {labels or 'unnamed'})"
            )
        self.model = model
        self.outputs = outputs
        self.relevant_class = None if outputs == 1 else (1 if relevant_class is None else relevant_class)

    def scores(self, outputs: np.ndarray, pairs: int) -> np.ndarray:
        """The relevance score of each of ``pairs`` pairs from the model's raw ``outputs``."""
        if self.relevant_class is None and outputs.shape in ((pairs,), (pairs, 1)):
            return outputs.reshape(pairs)
        if self.relevant_class is None or outputs.shape != (pairs, self.outputs):
            raise ModelOutputError(
                f"cross-encoder {self.model!r} returned scores of shape {outputs.shape} for {pairs} pairs, expected "
                f"({pairs}, {self.outputs}): this head cannot be read as one relevance score per pair"
            )
        logits = outputs.astype(np.float64)
        others = np.delete(logits, self.relevant_class, axis=1)
        return logits[:, self.relevant_class] - np.logaddexp.reduce(others, axis=1)


class CrossEncoderScorer:
    """A sentence-transformers ``CrossEncoder`` (any backend of :mod:`~llama_index_twostage.stage2.backends`).

    Scores are exactly ``CrossEncoder.predict``'s for the same pairs, as Python floats; with ``normalize`` a model
    that outputs logits gets a sigmoid. A head with several outputs is read by :class:`OutputHead`
    (``relevant_class``). Pairs are batched shortest first, each batch at most ``batch_size`` pairs and
    ``batch_tokens`` tokens, padding included (unset: :data:`CPU_BATCH_TOKENS` on a CPU, no limit on a GPU).

    Args:
        cross_encoder: the loaded model (see :meth:`load`).
        name: the model's hub id or directory, as given to the loader.
        backend: the runtime it was loaded on; part of the cache key (precision changes scores).
        relevant_class: for heads with several outputs, the index of the relevant class (default 1 of 2).
        backend_reason: why this backend, when ``auto`` chose it.
        window: the token window to count with; default: one of its own. Scorers of one model may share one (its
            tokenizer copy and its count cache): :meth:`load` does, through the pool.
    """

    def __init__(
        self,
        cross_encoder: CrossEncoder,
        *,
        name: str,
        backend: RerankBackend = "torch",
        normalize: bool = False,
        batch_size: int = 32,
        batch_tokens: int | None = None,
        relevant_class: int | None = None,
        backend_reason: str | None = None,
        window: TokenWindow | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_tokens is not None and batch_tokens <= 0:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        self.cross_encoder = cross_encoder
        self._name = name
        self.backend = backend
        self.normalize = normalize
        self.batch_size = batch_size
        on_cpu = backends.runs_on_cpu(cross_encoder)
        self.batch_tokens = batch_tokens if batch_tokens is not None else (CPU_BATCH_TOKENS if on_cpu else None)
        self.backend_reason = backend_reason
        self._window = (
            window if window is not None else TokenWindow(cross_encoder.tokenizer, cross_encoder.max_seq_length)
        )
        config = cross_encoder.config
        labels = {int(index): str(label) for index, label in (getattr(config, "id2label", None) or {}).items()}
        self.head = OutputHead(name, cross_encoder.num_labels, relevant_class, labels if len(labels) > 1 else {})

    @classmethod
    def load(
        cls,
        model: str,
        *,
        backend: BackendSetting = "torch",
        max_length: int | None = None,
        device: str | None = None,
        normalize: bool = False,
        batch_size: int = 32,
        batch_tokens: int | None = None,
        relevant_class: int | None = None,
        trust_remote_code: bool = False,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        pool: ModelPool | None = None,
    ) -> CrossEncoderScorer:
        """Load ``model`` (hub id or local directory) on ``backend``; through ``pool`` it is loaded once per pool.

        ``backend="auto"`` picks one for this machine (see :mod:`~llama_index_twostage.stage2.auto`); the choice and
        its reason are logged and kept in :attr:`backend_reason`.
        """

        def scorer(chosen: RerankBackend, reason: str | None = None, shared: ModelPool | None = pool) -> Self:
            key = ("cross-encoder", model, device, max_length, trust_remote_code, chosen, Path(cache_dir))

            def load() -> CrossEncoder:
                return load_cross_encoder(model, device, max_length, trust_remote_code, chosen, Path(cache_dir))

            cross_encoder = shared.get(key, load) if shared is not None else load()

            def window() -> TokenWindow:
                return TokenWindow(cross_encoder.tokenizer, cross_encoder.max_seq_length)

            return cls(
                cross_encoder,
                name=model,
                backend=chosen,
                normalize=normalize,
                batch_size=batch_size,
                batch_tokens=batch_tokens,
                relevant_class=relevant_class,
                backend_reason=reason,
                window=shared.get(("token-window", *key), window) if shared is not None else None,
            )

        if backend != "auto":
            return scorer(backend)

        def choose() -> BackendChoice:
            # Calibration models are loaded outside the pool: only the chosen one stays in memory.
            choice = choose_backend(model, device, cache_dir, lambda candidate: scorer(candidate, shared=None).score)
            logger.info("rerank_backend auto chose %s for %s: %s", choice.backend, model, choice.reason)
            return choice

        key = ("auto-backend", model, device, max_length, Path(cache_dir))
        choice = pool.get(key, choose) if pool is not None else choose()
        return scorer(choice.backend, choice.reason)

    @property
    def name(self) -> str:
        return self._name

    @property
    def cache_key(self) -> tuple[str, str, int, bool, int | None]:
        """What changes a score: model, backend (precision), window, activation and the class read; not device or
        batch size."""
        return (self._name, self.backend, self.cross_encoder.max_seq_length, self.normalize, self.head.relevant_class)

    @property
    def window(self) -> TokenWindow:
        return self._window

    def score(self, query: str, texts: list[str]) -> list[float]:
        if not texts:
            return []
        batches = self.batches(query, texts)
        by_length = np.concatenate([self._predict([(query, texts[index]) for index in batch]) for batch in batches])
        outputs = np.empty_like(by_length)
        outputs[[index for batch in batches for index in batch]] = by_length  # back to the order of texts
        scores = self.head.scores(outputs, len(texts))
        gives_logits = self.head.relevant_class is not None or isinstance(
            self.cross_encoder.activation_fn, torch.nn.Identity
        )
        if self.normalize and gives_logits:
            scores = 1.0 / (1.0 + np.exp(-scores))
        return [float(value) for value in scores]

    def batches(self, query: str, texts: Sequence[str]) -> list[list[int]]:
        """Indices of ``texts``, shortest pair first, grouped in batches of at most ``batch_size`` pairs and
        ``batch_tokens`` padded tokens (a pair longer than that alone)."""
        lengths = self._window.pair_lengths(query, texts)
        budget = self.batch_tokens or float("inf")
        batches: list[list[int]] = []
        for index in sorted(range(len(texts)), key=lengths.__getitem__):
            batch = batches[-1] if batches else []
            if batch and len(batch) < self.batch_size and (len(batch) + 1) * lengths[index] <= budget:
                batch.append(index)
            else:
                batches.append([index])
        return batches

    def _predict(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """The model's raw outputs for one batch; one output goes through the model's own activation (a 0-1 model
        stays 0-1), several come back as logits for the head."""
        one_output = self.head.relevant_class is None
        outputs = self.cross_encoder.predict(
            pairs,
            batch_size=len(pairs),
            activation_fn=None if one_output else torch.nn.Identity(),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(outputs)

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

    ONNX Runtime and OpenVINO backends export to ``cache_dir`` once (see :mod:`~llama_index_twostage.stage2.backends`);
    a missing optional package fails here, before any loading, with the extra that installs it.
    """

    def load() -> CrossEncoder:
        from sentence_transformers import CrossEncoder

        exported = backends.runs_an_export(backend)
        if exported:
            backends.require_runtime(backend)
            backends.require_cpu(backend, device)
        logger.info("loading cross-encoder %s (%s backend)", model, backend)
        cross_encoder = CrossEncoder(
            model,
            device="cpu" if exported else device,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            model_kwargs=backends.torch_model_kwargs(backend),
        )
        if exported:
            backends.use_export(cross_encoder, model, backend, cache_dir, device)
        return cross_encoder

    return load_or_explain("rerank_model", model, load)
