"""Files -> documents for folder ingestion: decoded as the text they hold, with ids that survive a move.

A folder is read as its user means it: each text file becomes one document, decoded from its byte-order mark, UTF-8
or, failing that, Windows-1252/Latin-1 (accents kept, never silently dropped); an HTML page becomes its text, a Word
file its text and a PDF one document per page (``<id>#page=N``, with its ``page_label``), through LlamaIndex's
readers (:mod:`.readers`); files that are none of these (images, archives, random bytes), that cannot be read
(corrupt, encrypted) and empty files are skipped and named, never stored as garbage.

A document's id is ``<source name>/<path inside the folder>``: the source name is the folder's own name, or one the
user gives (``source=``, ``--source``). The folder's resolved location is its source, so the same folder through a
symlink or from another working directory stays one source, and another folder of the same name is a different
source (ingestion refuses to let it replace the first one's documents). A named source is its name: portable
across machines and moves. The path is not embedded, so a moved or renamed file keeps its embeddings.
"""

from __future__ import annotations

import codecs
import mimetypes
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from llama_index.core import Document

from llama_index_twostage.errors import DocumentError
from llama_index_twostage.ingest.readers import HTML_SUFFIXES, Part, html_text, read_binary

# What the reader keeps out of the text the models read (as LlamaIndex's SimpleDirectoryReader does): file
# facts that change on a mere `touch` or copy must not change what is embedded.
FILE_FACTS = ["file_name", "file_type", "file_size", "last_modified_date"]
NOT_EMBEDDED = [*FILE_FACTS, "file_path"]  # a moved file is the same text: its embeddings are reused
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Share of control characters beyond which decoded bytes are not text: random bytes decode (as Latin-1) to about 22%,
# while text carries at most a few stray escapes.
_MOST_UNPRINTABLE = 0.10


@dataclass
class FolderDocuments:
    """The documents read from a folder (or one file), and the files set aside with the reason for each."""

    documents: list[Document] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # document id -> why it was not read
    source: str | None = None  # the name given, or the folder's resolved location (see the module's docstring)


def decode_text(data: bytes) -> str | None:
    """The text ``data`` holds, or None when it is not text (binary data decodes to control characters)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding)
    if b"\x00" in data:
        return None
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        unprintable = sum(not (character.isprintable() or character.isspace()) for character in text)
        return text if unprintable <= _MOST_UNPRINTABLE * len(text) else None
    return None


def _parts(file: Path, data: bytes) -> list[Part] | str:
    """The text of a file (a part per page of a PDF), or why it has none we can read."""
    parts = read_binary(file)
    if parts is not None:
        return parts
    text = decode_text(data)
    if text is None:
        return (
            "not text (binary) nor a PDF, DOCX or HTML file; convert it to text, or load it with a LlamaIndex reader "
            "and ingest_documents"
        )
    if file.suffix.lower() in HTML_SUFFIXES:
        try:
            text = html_text(text)
        except ImportError as error:
            return str(error)
    return [Part(text)]


def _documents(file: Path, document_id: str) -> list[Document] | str:
    """The file as documents (one, or one per page of a PDF), or why it cannot be read."""
    data = file.read_bytes()
    if not data.strip():
        return "empty"
    parts = _parts(file, data)
    if isinstance(parts, str):
        return parts
    parts = [part for part in parts if part.text.strip()]
    if not parts:
        return "empty (no text: a scanned PDF needs OCR first)" if file.suffix.lower() == ".pdf" else "empty"
    modified = datetime.fromtimestamp(file.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d")
    metadata = {
        "file_path": document_id,
        "file_name": file.name,
        "file_type": mimetypes.guess_type(file.name)[0] or "text/plain",
        "file_size": len(data),
        "last_modified_date": modified,
    }
    return [
        Document(
            id_=document_id + part.suffix,
            text=part.text,
            metadata={**metadata, **part.metadata},
            excluded_embed_metadata_keys=[*NOT_EMBEDDED, *part.metadata],  # a page number means nothing to the model
            excluded_llm_metadata_keys=list(FILE_FACTS),
        )
        for part in parts
    ]


def read_files(path: Path, source: str | None = None) -> FolderDocuments:
    """Every visible file under ``path`` (a folder, recursively, or one file), in path order; ``source`` names the
    folder (its ids become ``<source>/<path>``, the same on any machine)."""
    if source is not None and (not source.strip() or "/" in source or "\\" in source):
        raise DocumentError(f"source name {source!r} must be non-empty and hold no '/' or '\\'")
    if path.is_dir():
        root, files = path, sorted(file for file in path.rglob("*") if file.is_file() and not _hidden(file, path))
    else:
        root, files = path.parent, [path]
    if not files:
        raise DocumentError(f"no documents to ingest: the folder {str(path)!r} holds no files")
    location = root.resolve()
    name = source or location.name or "root"
    read = FolderDocuments(source=source or location.as_posix())
    for file in files:
        document_id = f"{name}/{file.relative_to(root).as_posix()}"
        result = _documents(file, document_id)
        if isinstance(result, str):
            read.skipped[document_id] = result
        else:
            read.documents.extend(result)
    return read


def _hidden(file: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in file.relative_to(root).parts)
