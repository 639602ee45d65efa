"""What a document must be to be stored, and the hash that tells whether it changed.

Chroma refuses some values deep inside an upsert and silently alters others (it drops the whole metadata of a
record holding NaN, rounds integers beyond 64 bits). Every document is checked here before anything is written,
so a bad one is named with its key and never leaves a run half done.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.schema import Document

from llama_index_twostage.errors import DocumentError
from llama_index_twostage.nodes import STAGE_KEY
from llama_index_twostage.store.contract import (
    CHUNKS_KEY,
    HASH_KEY,
    ORIGIN_KEY,
    SOURCE_KEY,
    STAMP_KEY,
    TEXT_HASH_KEY,
)

_LLAMA_INDEX_ID_KEYS = ("document_id", "doc_id", SOURCE_KEY)
_RESERVED_KEYS = frozenset(
    {
        "_node_content",
        "_node_type",
        "chroma:document",
        HASH_KEY,
        CHUNKS_KEY,
        STAMP_KEY,
        TEXT_HASH_KEY,
        ORIGIN_KEY,
        STAGE_KEY,  # each result's stage entry: a stored value there would be merged with it, or break retrieval
    }
)
_INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True)
class Source:
    """A document to store and the hash of everything that decides its chunks."""

    document: Document
    doc_hash: str


def _unencodable(text: str) -> str | None:
    """Why Chroma cannot store ``text`` (lone surrogates are not UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"holds an unpaired surrogate at position {error.start}"
    return None


def _value_problem(value: Any) -> str | None:
    """Why Chroma would refuse or silently alter a metadata value (it drops NaN, rounds big ints), or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if value in _INT64 else "is an integer beyond 64 bits (Chroma would round it)"
    if isinstance(value, float):
        return None if math.isfinite(value) else "is NaN or infinite (Chroma would drop the record's metadata)"
    if isinstance(value, str):
        return _unencodable(value)
    return f"is a {type(value).__name__}: store a str, int, float, bool or None (e.g. json.dumps it)"


def _key_problem(key: Any, value: Any, document_id: str) -> str | None:
    """Why a metadata key cannot be stored as given, or None."""
    if not isinstance(key, str) or not key.strip():
        return "is not a non-empty string"
    if key.startswith(("$", "#")):
        return "starts with '$' or '#', which Chroma reserves"
    if key in _RESERVED_KEYS:
        return "is reserved for the records this package writes"
    if key in _LLAMA_INDEX_ID_KEYS and value != document_id:
        return "holds a value other than the document id, which LlamaIndex stores under this key"
    return _unencodable(key)


def metadata_problem(key: Any, value: Any, document_id: str) -> str | None:
    """Why a metadata entry of a chunk of ``document_id`` cannot be stored as given, or None."""
    return _key_problem(key, value, document_id) or _value_problem(value)


def text_problem(text: str) -> str | None:
    """Why Chroma cannot store ``text``, or None."""
    return _unencodable(text)


def validate_document(document: Document) -> None:
    """Refuse, naming the document and the field, what Chroma would reject or silently change.

    Run on every document before anything is written, so a bad document never leaves a run half done.
    """
    document_id = document.id_
    if not isinstance(document_id, str) or not document_id.strip() or _unencodable(document_id):
        raise DocumentError(f"document id {document_id!r} is unusable: give each document a non-empty text id")
    problem = _unencodable(document.text)
    if problem:
        raise DocumentError(f"document {document_id!r}: its text {problem}; clean the text before ingesting")
    for key, value in document.metadata.items():
        problem = metadata_problem(key, value, document_id)
        if problem:
            raise DocumentError(f"document {document_id!r}: metadata key {key!r} {problem}")


def document_hash(document: Document, chunking: tuple[int, int] | str) -> str:
    """Hash of everything that decides a document's chunks and their embeddings: content, metadata, the
    exclusions and templates of its text views, and the chunking (chunk size and overlap, or the identity of a
    transformation chain)."""
    payload = document.model_dump(mode="json", exclude={"embedding"})
    payload["twostage_chunking"] = chunking
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def collect_sources(documents: Sequence[Document], chunking: tuple[int, int] | str) -> dict[str, Source]:
    """Validate and hash each document; the same id twice is fine only for the same content."""
    sources: dict[str, Source] = {}
    for document in documents:
        validate_document(document)
        source = Source(document, document_hash(document, chunking))
        known = sources.setdefault(document.id_, source)
        if known.doc_hash != source.doc_hash:
            raise DocumentError(
                f"two documents share the id {document.id_!r} with different content: give each a unique id_"
            )
    return sources
