"""``RetryPolicy``: how often a failed call to a server is tried again, and how long to wait between tries.

One policy serves the Chroma store and the rerank client, so both back off the same way: the first wait is
``backoff_s`` and each further one doubles. What counts as worth retrying stays with the caller, which knows its
server: Chroma retries transport failures of idempotent calls; the rerank client also 429 and 503, honours
``Retry-After`` and moves to another replica first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class RetryPolicy(BaseModel):
    """Retries of a failed call and the exponential backoff between them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retries: int = Field(2, ge=0, description="Retries after the first try; 0 fails on the first error.")
    backoff_s: float = Field(
        0.2, ge=0, allow_inf_nan=False, description="Wait before the first retry, in seconds; doubles on each retry."
    )

    @property
    def attempts(self) -> int:
        """Tries in all: the first and its retries."""
        return self.retries + 1

    def delay(self, failed_attempt: int) -> float:
        """The wait after the ``failed_attempt``-th try (counted from 1)."""
        return self.backoff_s * 2 ** (failed_attempt - 1)

    def run(self, operation: Callable[[], T], *, retried: type[Exception], logger: logging.Logger, what: str) -> T:
        """Call ``operation``; on a ``retried`` error wait and call again, at most :attr:`retries` times. Each retry
        is logged as a warning (a flapping server shows in the logs); the last failure propagates."""
        for attempt in range(1, self.attempts):
            try:
                return operation()
            except retried as error:
                time.sleep(self._logged_delay(attempt, error, logger, what))
        return operation()

    def _logged_delay(self, attempt: int, error: Exception, logger: logging.Logger, what: str) -> float:
        delay = self.delay(attempt)
        logger.warning(
            "%s failed (attempt %d of %d), retrying in %.2fs: %s", what, attempt, self.attempts, delay, error
        )
        return delay
