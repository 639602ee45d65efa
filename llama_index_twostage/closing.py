"""The one way an owner of heavy state (clients, an index, models) serves a ``with`` block: it closes on the way out."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """Base of the owners that release what they hold in :meth:`close`; ``with owner:`` calls it however the block
    ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
