"""BEIR's document format: a ``corpus.jsonl`` of ``{"_id", "title", "text"}`` records, as documents.

Ingestion reads it (``twostage ingest corpus.jsonl``) and evaluation reads it with its queries and qrels
(:mod:`~llama_index_twostage.evaluation.datasets`); records are streamed line by line, and a bad line is named by
file and line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from llama_index.core.schema import Document

from llama_index_twostage.errors import TwoStageError

BEIR_LAYOUT = "<dir>/corpus.jsonl, <dir>/queries.jsonl, <dir>/qrels/<split>.tsv"


class DatasetError(TwoStageError, ValueError):
    """A dataset is missing, laid out wrongly or malformed."""


def load_beir_corpus(path: str | Path, *, title_as_metadata: bool = False) -> list[Document]:
    """The documents of a BEIR ``corpus.jsonl``, in file order: the title joined to the text, or with
    ``title_as_metadata`` the text alone and the title in ``metadata["title"]`` (which the bi-encoder embeds, as
    LlamaIndex does, and the reranker reads only when ``rerank_metadata_keys`` names it or is unset)."""
    corpus_path = Path(path)
    if not corpus_path.is_file():
        raise DatasetError(f"Missing BEIR corpus file {corpus_path}; expected a BEIR layout ({BEIR_LAYOUT})")
    make = _titled_document if title_as_metadata else _beir_document
    return [make(doc_id, record) for _, doc_id, record in iter_jsonl_records(corpus_path)]


def iter_jsonl_records(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Stream (line number, ``_id``, record) from a BEIR jsonl file, skipping
    blank lines; the line number lets callers report bad fields precisely."""
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, str(required_field(record, "_id", path, lineno)), record


def required_field(record: Mapping[str, Any], key: str, path: Path, lineno: int) -> Any:
    """A required field of a jsonl record, with file and line in the error."""
    if key not in record:
        raise DatasetError(f"{path}:{lineno}: missing field {key!r}")
    return record[key]


def _beir_document(doc_id: str, record: Mapping[str, Any]) -> Document:
    """BEIR record -> Document whose text is "title\\ntext".

    The title is also kept as metadata but excluded from the embed/LLM views,
    otherwise LlamaIndex would prepend it a second time when embedding.
    """
    title = record.get("title") or ""
    text = record.get("text") or ""
    if not title:
        return Document(id_=doc_id, text=text)
    return Document(
        id_=doc_id,
        text=f"{title}\n{text}",
        metadata={"title": title},
        excluded_embed_metadata_keys=["title"],
        excluded_llm_metadata_keys=["title"],
    )


def _titled_document(doc_id: str, record: Mapping[str, Any]) -> Document:
    title = record.get("title") or ""
    return Document(id_=doc_id, text=record.get("text") or "", metadata={"title": title} if title else {})
