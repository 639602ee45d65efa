"""Size-bounded, thread-safe caches of cross-encoder work, so no (query, text) pair is scored twice.

A cross-encoder pass costs tens of milliseconds per pair on a CPU, while a cache lookup costs microseconds. Repeated
queries, a ``recall_k`` sweep and a cascade that revisits its shortlist all ask for pairs already scored; the score
cache answers them. A key is (scorer, query, content hash): the scorer part names model, backend, window and
activation, so scores from different models or precisions never mix, and hashing the text keeps keys small and makes
an edited node miss even when its id is unchanged.

Owners: the factory holds one score cache and hands it to its rerankers (so equal scorers share scores);
each local scorer's token window owns the token-count cache of its tokenizer (see
:mod:`llama_index_twostage.stage2.scorers`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

PairKey = tuple[Hashable, str, str]
TextKey = tuple[Hashable, str]

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")
Input = TypeVar("Input")


def content_hash(text: str) -> str:
    """A short, collision-safe digest of the text a model reads."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def pair_key(scorer: Hashable, query: str, text: str) -> PairKey:
    """The cache key of one pair: who scores it, the query, and what the candidate says."""
    return (scorer, query, content_hash(text))


@dataclass(frozen=True)
class CacheStats:
    """Counters for observing a cache (``hits`` + ``misses`` = keys looked up)."""

    hits: int
    misses: int
    size: int
    max_size: int


class LruCache(Generic[Key, Value]):
    """A thread-safe LRU map holding at most ``max_size`` entries."""

    def __init__(self, max_size: int) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.max_size = max_size
        self._values: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        """The cached value of each key (None where absent); hits become most recently used."""
        found: list[Value | None] = []
        with self._lock:
            for key in keys:
                value = self._values.get(key)
                if value is not None:
                    self._values.move_to_end(key)
                found.append(value)
            hits = sum(value is not None for value in found)
            self._hits += hits
            self._misses += len(keys) - hits
        return found

    def put_many(self, items: Sequence[tuple[Key, Value]]) -> None:
        """Store values, evicting the least recently used entries beyond ``max_size``."""
        with self._lock:
            for key, value in items:
                self._values[key] = value
                self._values.move_to_end(key)
            while len(self._values) > self.max_size:
                self._values.popitem(last=False)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._values), self.max_size)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._hits = self._misses = 0


class ScoreCache(LruCache[PairKey, float]):
    """Cross-encoder scores by (scorer, query, text hash): what a reranker looks up before any forward pass."""


class Lookup(Generic[Key, Value, Input]):
    """One batch of keys looked up in ``cache``: :attr:`todo` is what must be computed, :meth:`complete` stores it.

    Looking up and storing are separate steps so that the computation between them can be a plain call or an
    awaited one (see :mod:`llama_index_twostage.stage2.plan`). Equal keys in one batch are computed once; without a
    cache, every input is computed.
    """

    def __init__(self, cache: LruCache[Key, Value] | None, keys: Sequence[Key], inputs: Sequence[Input]) -> None:
        self.cache = cache
        self.keys = list(keys)
        self.found: list[Value | None] = cache.get_many(keys) if cache is not None else [None] * len(keys)
        self.missing = {key: item for key, item, hit in zip(keys, inputs, self.found) if hit is None}
        self.todo: list[Input] = list(inputs) if cache is None else list(self.missing.values())

    def complete(self, computed: Sequence[Value]) -> tuple[list[Value], int]:
        """The value of each key, in key order, given :attr:`todo`'s values; and how many came from the cache."""
        if self.cache is None:
            return list(computed), 0
        fresh = dict(zip(self.missing, computed))
        self.cache.put_many(list(fresh.items()))
        values = [fresh[key] if hit is None else hit for key, hit in zip(self.keys, self.found)]
        return values, sum(hit is not None for hit in self.found)


def compute_through(
    cache: LruCache[Key, Value] | None,
    keys: Sequence[Key],
    inputs: Sequence[Input],
    compute: Callable[[list[Input]], list[Value]],
) -> tuple[list[Value], int]:
    """The value of each key: cached ones looked up, the rest computed from their inputs in one call and stored.

    Returns the values in key order and how many came from the cache. Two threads missing the same key at the same
    moment may both compute it (``compute`` runs outside the lock so lookups never wait on a forward pass); both
    store the same value.
    """
    lookup = Lookup(cache, keys, inputs)
    return lookup.complete(compute(lookup.todo) if lookup.todo else [])


def pair_keys(scorer: Hashable, query: str, texts: Sequence[str]) -> list[PairKey]:
    """The cache keys of (query, text) pairs scored by ``scorer``."""
    return [pair_key(scorer, query, text) for text in texts]


@dataclass(frozen=True)
class ScoredPairs:
    """Scores in the order of the texts given, and what reading them took.

    ``pairs``: (query, text) pairs read for them, ``len(scores)`` unless a text was read as several windows (each
    window is a pair); ``cached``: how many of those came from the cache; ``windowed``: texts read as several
    windows.
    """

    scores: list[float]
    cached: int
    pairs: int
    windowed: int = 0
