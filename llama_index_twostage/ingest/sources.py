"""What ``twostage ingest PATH`` reads: a BEIR corpus (``corpus.jsonl``, or a folder holding one), else the files of a
folder (or one file), each as the documents ingestion takes."""

from __future__ import annotations

import logging
from pathlib import Path

from llama_index_twostage.errors import ConfigurationError, DocumentError
from llama_index_twostage.ingest.beir import load_beir_corpus
from llama_index_twostage.ingest.files import FolderDocuments, read_files

logger = logging.getLogger(__name__)


def load_documents(path: Path, limit: int | None = None, source: str | None = None) -> FolderDocuments:
    """The first ``limit`` documents of a BEIR corpus at ``path``, else of the folder or file there (named ``source``
    where given; files that are not text are skipped, logged and listed in the result)."""
    if limit is not None and limit < 1:
        raise ConfigurationError(f"--limit must be at least 1, got {limit}: leave it out to ingest every document")
    corpus = path / "corpus.jsonl" if path.is_dir() else path
    if corpus.suffix == ".jsonl" and corpus.is_file():
        read = FolderDocuments(load_beir_corpus(corpus))
    else:
        read = read_files(path, source)
    if read.skipped:
        logger.warning(
            "skipped %d files: %s",
            len(read.skipped),
            "; ".join(f"{name} ({why})" for name, why in read.skipped.items()),
        )
    if not read.documents:
        raise DocumentError(f"no documents to ingest in {str(path)!r}: {len(read.skipped)} files, none of them text")
    read.documents = read.documents[:limit]
    return read
