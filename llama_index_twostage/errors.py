"""Errors that tell the user what went wrong and what to do about it.

Each subclasses the builtin a caller would naturally catch (``ValueError``, ``LookupError``, ...), so code that
knows nothing of this package still handles them sensibly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class TwoStageError(Exception):
    """Base class of every error raised by ``llama_index_twostage``."""


class ConfigurationError(TwoStageError, ValueError):
    """A setting is invalid, or settings contradict each other."""


class EmptyQueryError(TwoStageError, ValueError):
    """The query has no text to embed or score."""


class InvalidQueryError(TwoStageError, ValueError):
    """The query is not valid text (e.g. an unpaired surrogate from a JSON ``\\ud800`` escape)."""


class CollectionNotFoundError(TwoStageError, LookupError):
    """The Chroma collection does not exist, or exists but holds nothing to retrieve."""


class CollectionMismatchError(TwoStageError, ValueError):
    """The collection was written with another embedding model, dimension or distance space."""


class ChromaUnavailableError(TwoStageError, ConnectionError):
    """The Chroma server (or the embedded store on disk) cannot be reached or used."""


class ChromaServerError(TwoStageError, ConnectionError):
    """The Chroma server, or a proxy before it, answered a request with an error; the message quotes the answer with
    every secret masked. Not retried: the same request meets the same answer."""


class ChromaAuthenticationError(TwoStageError, PermissionError):
    """The Chroma server refused the credentials (a missing or wrong ``chroma_token``); the token is never shown."""


class ModelLoadError(TwoStageError, OSError):
    """A bi-encoder or cross-encoder could not be loaded."""


class DocumentError(TwoStageError, ValueError):
    """A document cannot be stored as given (its id, text or metadata), or a stored record cannot be returned as a
    node; the message names it and the field."""


class ModelOutputError(TwoStageError, ValueError):
    """A cross-encoder's outputs cannot be read as one relevance score per pair; the message names model and shape."""


class RerankServerError(TwoStageError, ConnectionError):
    """The rerank server could not be reached in time, failed, or answered something other than one score per
    document; the message names the URL and the HTTP status, never the API key."""


class RerankAuthenticationError(RerankServerError, PermissionError):
    """The rerank server refused the credentials (a missing or wrong ``rerank_api_key``); the key is never shown."""


class LexicalIndexError(TwoStageError, RuntimeError):
    """The lexical (BM25) index cannot be used: missing while Chroma holds records, damaged, or locked by a writer."""


class LexicalIndexBusy(LexicalIndexError):
    """Another process holds the lexical index's writer lock; a query answers from what the index holds and catches
    up later, a writer retries."""


class EmbeddedStoreInUseError(TwoStageError, RuntimeError):
    """Another process has the embedded Chroma store open: Chroma caches an embedded store per process, so two
    processes would each see their own, diverging copy; serve it with ``chroma run`` instead."""


def one_line(error: ValidationError, name: Callable[[tuple[int | str, ...]], str] | None = None) -> str:
    """Pydantic's multi-line report folded into ``field: message`` pairs, without inputs (a secret may be one) or
    documentation links; ``name`` writes a field's location (default: dotted)."""
    name = name or (lambda loc: ".".join(map(str, loc)))
    return "; ".join(
        f"{name(item['loc'])}: {item['msg']}" if item["loc"] else item["msg"]
        for item in error.errors(include_input=False, include_url=False)
    )
