"""Documents people keep that are not plain text: PDF (a part per page, so a result can cite its page), Word and
HTML, read through LlamaIndex's file readers (``pip install "llama-index-twostage[files]"``).

A file these cannot read (corrupt, encrypted, or the extra not installed) is a reason to skip it, never a traceback:
folder ingestion names it and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
_NOT_TEXT_TAGS = ["script", "style", "noscript", "template", "svg", "head"]
_EXTRA = "pip install 'llama-index-twostage[files]'"


@dataclass(frozen=True)
class Part:
    """Text of a file, or of one of its pages: ``suffix`` extends the file's document id (``#page=3``) and
    ``metadata`` is what the part adds to the file's (``page_label``)."""

    text: str
    suffix: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def _cause(error: BaseException) -> BaseException:
    """The error behind a reader's retries (``PDFReader`` retries every failure, then raises tenacity's wrapper)."""
    last_attempt = getattr(error, "last_attempt", None)
    inner = last_attempt.exception() if last_attempt is not None else None
    return inner if inner is not None else error


def _reason(kind: str, error: BaseException) -> str:
    error = _cause(error)
    if isinstance(error, ImportError):
        return f"{kind} needs LlamaIndex's file readers: {_EXTRA}"
    if "decrypt" in f"{type(error).__name__} {error}".lower():
        return f"encrypted {kind}: decrypt it (e.g. `qpdf --decrypt in.pdf out.pdf`) and ingest it again"
    detail = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    return f"unreadable {kind} ({detail[:120]})"


def pdf_pages(file: Path) -> list[Part]:
    from llama_index.readers.file import PDFReader

    pages = PDFReader(return_full_document=False).load_data(file)
    return [
        Part(page.text, f"#page={number}", {"page_label": str(page.metadata.get("page_label", number))})
        for number, page in enumerate(pages, 1)
    ]


def docx_text(file: Path) -> list[Part]:
    from llama_index.readers.file import DocxReader

    return [Part("\n".join(document.text for document in DocxReader().load_data(file)))]


READERS = {".pdf": ("PDF", pdf_pages), ".docx": ("Word file", docx_text)}


def read_binary(file: Path) -> list[Part] | str | None:
    """The parts of a PDF or DOCX file, or why it cannot be read; None for other formats."""
    kind, read = READERS.get(file.suffix.lower(), (None, None))
    if read is None:
        return None
    try:
        return read(file)
    except Exception as error:  # a reader's failure on one file is a skip with its reason, whatever it raised
        return _reason(kind, error)


def html_text(markup: str) -> str:
    """The text a reader sees in an HTML page: no tags, scripts, styles or head, one line per block.

    LlamaIndex's ``HTMLTagReader`` reads a file as UTF-8 only and keeps script text; the markup here is already
    decoded (byte-order mark, UTF-8 or Windows-1252, as every text file), and BeautifulSoup (which that reader uses)
    parses it.
    """
    try:
        from bs4 import BeautifulSoup
    except ImportError as error:
        raise ImportError(f"HTML needs BeautifulSoup: {_EXTRA}") from error
    soup = BeautifulSoup(markup, "html.parser")
    for hidden in soup(_NOT_TEXT_TAGS):
        hidden.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line)
