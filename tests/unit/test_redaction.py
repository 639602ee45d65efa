"""The Redactor as a logging filter: secrets masked wherever a record holds them, every other record untouched."""

from __future__ import annotations

import gc
import io
import logging

import pytest

from llama_index_twostage.redaction import MASK, Redactor

SECRET = "key-0123456789-abcdef"


@pytest.fixture
def logged() -> tuple[logging.Logger, io.StringIO, Redactor]:
    """A logger whose records pass the Redactor on their way to a text handler."""
    out = io.StringIO()
    log = logging.getLogger("test.redaction")
    log.propagate = False
    handler = logging.StreamHandler(out)
    log.addHandler(handler)
    redactor = Redactor([SECRET])
    log.addFilter(redactor)
    yield log, out, redactor
    log.removeFilter(redactor)
    log.removeHandler(handler)


def test_a_secret_in_the_arguments_or_the_traceback_is_masked(logged):
    log, out, _ = logged
    log.warning("answered with %s", f"Bearer {SECRET}")
    try:
        raise RuntimeError(f"echoed {SECRET[:12]}")
    except RuntimeError:
        log.exception("failed")
    shown = out.getvalue()
    assert SECRET[:8] not in shown and shown.count(MASK) == 2 and "RuntimeError: echoed" in shown


def test_a_record_without_a_secret_keeps_its_arguments_and_traceback():
    redactor = Redactor([SECRET])
    try:
        raise ValueError("nothing secret")
    except ValueError as error:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s of %d", ("one", 2), (ValueError, error, None))
    assert redactor.filter(record)
    assert (record.msg, record.args, record.exc_info[0]) == ("%s of %d", ("one", 2), ValueError)


def test_arguments_that_do_not_fit_the_format_are_shown_masked_not_raised(logged):
    log, out, _ = logged
    log.warning("retry %d of %d", SECRET, 3)  # logging itself would report a "Logging error" here
    assert out.getvalue().strip() == f"retry %d of %d (arguments: ('{MASK}', 3))"


def test_watched_loggers_are_released_with_an_owner_that_never_closed():
    class Owner:
        pass

    owner, redactor = Owner(), Redactor([SECRET])
    redactor.watch(owner, names=("test.redaction.watched",))
    redactor.unwatch()  # closed, then reopened: watched again
    redactor.watch(owner, names=("test.redaction.watched",))
    assert logging.getLogger("test.redaction.watched").filters.count(redactor) == 1
    del owner
    gc.collect()
    assert redactor not in logging.getLogger("test.redaction.watched").filters
