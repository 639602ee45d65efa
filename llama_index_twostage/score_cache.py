"""A process-wide, size-bounded cache of cross-encoder scores, so no (query, text) pair is scored twice.

A cross-encoder pass costs tens of milliseconds per pair on a CPU, while a cache lookup costs microseconds. Repeated
queries, a ``recall_k`` sweep and a cascade that revisits its shortlist all ask for pairs already scored; this cache
answers them. A key is (scorer, query, content hash): the scorer part names model, backend, window and activation,
so scores from different models or precisions never mix, and hashing the text keeps keys small and makes an edited
node miss even when its id is unchanged.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from llama_index_twostage.models import shared_model

PairKey = tuple[Hashable, str, str]


def content_hash(text: str) -> str:
    """A short, collision-safe digest of the text a model reads."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def pair_key(scorer: Hashable, query: str, text: str) -> PairKey:
    """The cache key of one pair: who scores it, the query, and what the candidate says."""
    return (scorer, query, content_hash(text))


@dataclass(frozen=True)
class CacheStats:
    """Counters for observing the cache (``hits`` + ``misses`` = pairs looked up)."""

    hits: int
    misses: int
    size: int
    max_size: int


class ScoreCache:
    """A thread-safe LRU map from :data:`PairKey` to score, holding at most ``max_size`` entries."""

    def __init__(self, max_size: int) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.max_size = max_size
        self._scores: OrderedDict[PairKey, float] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get_many(self, keys: Sequence[PairKey]) -> list[float | None]:
        """The cached score of each key (None where absent); hits become most recently used."""
        found: list[float | None] = []
        with self._lock:
            for key in keys:
                score = self._scores.get(key)
                if score is not None:
                    self._scores.move_to_end(key)
                found.append(score)
            hits = sum(score is not None for score in found)
            self._hits += hits
            self._misses += len(keys) - hits
        return found

    def put_many(self, items: Sequence[tuple[PairKey, float]]) -> None:
        """Store scores, evicting the least recently used entries beyond ``max_size``."""
        with self._lock:
            for key, score in items:
                self._scores[key] = score
                self._scores.move_to_end(key)
            while len(self._scores) > self.max_size:
                self._scores.popitem(last=False)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._scores), self.max_size)

    def clear(self) -> None:
        with self._lock:
            self._scores.clear()
            self._hits = self._misses = 0


def shared_score_cache(max_size: int) -> ScoreCache | None:
    """The process-wide cache of this size (every reranker asking for it shares it); None when ``max_size`` is 0."""
    if max_size == 0:
        return None
    return shared_model(("score-cache", max_size), lambda: ScoreCache(max_size))


@dataclass(frozen=True)
class ScoredPairs:
    """Scores in the order of the texts given, and how many of them came from the cache."""

    scores: list[float]
    cached: int


def score_through(
    cache: ScoreCache | None,
    scorer: Hashable,
    query: str,
    texts: Sequence[str],
    score: Callable[[list[str]], list[float]],
) -> ScoredPairs:
    """Scores of ``texts`` for ``query``: cached ones looked up, the rest scored in one ``score`` call and stored.

    Equal texts in one call are scored once. Two threads missing the same pair at the same moment may both score
    it (the model runs outside the lock so lookups never wait on a forward pass); both store the same value.
    """
    if cache is None:
        return ScoredPairs(score(list(texts)) if texts else [], 0)
    keys = [pair_key(scorer, query, text) for text in texts]
    found = cache.get_many(keys)
    missing = {key: text for key, text, hit in zip(keys, texts, found) if hit is None}
    fresh = dict(zip(missing, score(list(missing.values())))) if missing else {}
    cache.put_many(list(fresh.items()))
    scores = [fresh[key] if hit is None else hit for key, hit in zip(keys, found)]
    return ScoredPairs(scores, len(texts) - sum(hit is None for hit in found))
