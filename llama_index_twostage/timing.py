"""The one place that times a stage, so every reported millisecond is measured the same way."""

from __future__ import annotations

from time import perf_counter
from types import TracebackType


class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.ms``: wall time of the block in milliseconds."""

    def __init__(self) -> None:
        self.ms = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.ms = (perf_counter() - self._start) * 1000.0
