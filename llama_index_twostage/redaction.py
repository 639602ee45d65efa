"""Secrets out of every message: errors, log lines and CLI output, including text that a server echoes back.

A server or proxy may echo a request's ``Authorization`` header in its answer, and an answer is often cut before it
is shown (an error quotes the first few hundred characters of a body). Masking only whole occurrences of a secret
would show all but the last characters of one that straddles the cut, so :class:`Redactor` masks every piece of
:data:`MIN_PIECE` or more characters of a secret wherever it appears.
"""

from __future__ import annotations

import logging
import traceback
import weakref
from collections.abc import Iterable

from pydantic import SecretStr

MIN_PIECE = 6  # a shorter piece of a long secret tells an attacker too little to be worth hiding
MASK = "**********"
# The loggers of the HTTP stack under the rerank and Chroma clients: at DEBUG, httpcore logs every response's
# headers, where a server may echo the key (a Location with it, say).
HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def _value(secret: SecretStr | str | None) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret or ""


class Redactor(logging.Filter):
    """Masks the given secrets, and every piece of :data:`MIN_PIECE` or more characters of them, in text.

    Call it on a message (``redactor(text)``); as a :class:`logging.Filter` it rewrites each record (message,
    arguments and traceback) before a handler writes it. Messages this package logs are masked where they are made;
    :meth:`watch` covers the HTTP stack's own loggers for as long as the owner of the secret is open.
    """

    def __init__(self, secrets: Iterable[SecretStr | str | None] = ()) -> None:
        super().__init__()
        values = {value for value in map(_value, secrets) if value}
        self._whole = sorted((value for value in values if len(value) < MIN_PIECE), key=len, reverse=True)
        self._pieces = {
            value[start : start + MIN_PIECE]
            for value in values
            if len(value) >= MIN_PIECE
            for start in range(len(value) - MIN_PIECE + 1)
        }
        self._watched: tuple[str, ...] = ()
        self._release: weakref.finalize | None = None  # unwatches when the owner goes without close()

    def __bool__(self) -> bool:
        return bool(self._whole or self._pieces)

    def __call__(self, text: str) -> str:
        if not self:
            return text
        for short in self._whole:
            text = text.replace(short, MASK)
        if not self._pieces:
            return text
        hidden = bytearray(len(text))
        for start in range(len(text) - MIN_PIECE + 1):
            if text[start : start + MIN_PIECE] in self._pieces:
                hidden[start : start + MIN_PIECE] = b"\x01" * MIN_PIECE
        if not any(hidden):
            return text
        shown, start = [], 0
        while start < len(text):
            end = start
            while end < len(text) and hidden[end] == hidden[start]:
                end += 1
            shown.append(MASK if hidden[start] else text[start:end])
            start = end
        return "".join(shown)

    def excerpt(self, text: str, limit: int) -> str:
        """``text`` for a one-line message: secrets masked (before the cut, so none straddles it), whitespace
        folded, at most ``limit`` characters."""
        return " ".join(self(text).split())[:limit]

    def watch(self, owner: object, names: tuple[str, ...] = HTTP_LOGGERS) -> None:
        """Mask the secrets in what these loggers log, until :meth:`unwatch`, or until ``owner`` (the holder of the
        secret) is garbage collected without having called it."""
        self._watched = names if self else ()
        for name in self._watched:
            logging.getLogger(name).addFilter(self)
        if self._watched and self._release is None:  # one per owner, however often it reopens
            self._release = weakref.finalize(owner, self.unwatch)

    def unwatch(self) -> None:
        for name in self._watched:
            logging.getLogger(name).removeFilter(self)
        self._watched = ()

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the parts of the record that hold a secret (its message, its traceback), masked; a record without
        one passes untouched (its arguments and ``exc_info`` kept for structured handlers). A call whose arguments
        do not fit its format is shown with them, masked, rather than raising where it was logged."""
        if not self:
            return True
        try:
            message, broken = record.getMessage(), False
        except (TypeError, ValueError):
            message, broken = f"{record.msg} (arguments: {record.args!r})", True
        masked = self(message)
        if broken or masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:
            trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            masked_trace = self(trace)
            if masked_trace != trace:
                record.exc_text, record.exc_info = masked_trace, None
        return True
