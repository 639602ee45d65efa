"""Several rerank servers serving one model: requests spread across them in turn, and one that fails rests a while.

A GPU fleet behind no load balancer, or two servers for availability: the scorer takes them in turn, request by
request, so one query's requests spread across them. A replica that fails (in transport, or busy: 429/503) rests for
``cooldown_s`` with a warning, and the request goes on to one it has not tried; a request fails only once every
replica has failed it (or its deadline passed). A resting replica is taken again when its rest is over, or before
that when every replica rests (the one resting longest first).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence

logger = logging.getLogger(__name__)


class Replicas:
    """The URLs of the servers of one model, taken in turn, each failure making one rest ``cooldown_s``."""

    def __init__(
        self, urls: Sequence[str], cooldown_s: float = 30.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not urls or len(set(urls)) != len(urls):
            raise ValueError(f"replicas need one or more distinct URLs, got {list(urls)}")
        self.urls = tuple(urls)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._turn = itertools.count()
        self._rest_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.urls)

    def choose(self, tried: Collection[str] = ()) -> str:
        """The replica for the next request (``tried``: the ones that already failed it): the next in turn that is
        neither resting nor tried; else one not tried, resting or not; else the one whose rest ends first."""
        with self._lock:
            start = next(self._turn)
            now = self._clock()
            in_turn = [self.urls[(start + step) % len(self.urls)] for step in range(len(self.urls))]
            untried = [url for url in in_turn if url not in tried]
            rested = [url for url in untried if self._rest_until.get(url, 0.0) <= now]
            candidates = rested or untried or in_turn
            return min(candidates, key=lambda url: max(self._rest_until.get(url, 0.0), now))

    def failed(self, url: str, reason: str) -> None:
        """``url`` rests ``cooldown_s``; with other replicas to serve meanwhile, a warning says so."""
        with self._lock:
            self._rest_until[url] = self._clock() + self.cooldown_s
        if len(self.urls) > 1:
            logger.warning(
                "rerank server %s failed (%s): skipped for %gs while the other %d serve",
                url,
                reason,
                self.cooldown_s,
                len(self.urls) - 1,
            )

    def answered(self, url: str) -> None:
        """``url`` answered: it serves again at once."""
        with self._lock:
            self._rest_until.pop(url, None)
