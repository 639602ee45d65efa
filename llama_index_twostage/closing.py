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


class ClosesOwner(Closing):
    """A component that a one-call factory (``build_reranker(settings)`` and the like) returns: it keeps the
    pipeline that built it, which nothing else holds, and ``close()`` (or leaving a ``with`` block) releases it.
    Asked of a pipeline you hold, a component owns nothing: closing it does nothing, close the pipeline."""

    _owner: Closing | None = None

    def keep_owner(self, owner: Closing) -> Self:
        self._owner = owner
        return self

    def close(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.close()
