"""Folders of real documents: PDF (a document per page, its page label in the metadata), Word, HTML (text, not
markup) and Markdown, read through LlamaIndex's file readers with every guarantee of folder ingestion: stable ids, a
touch re-embeds nothing, and a corrupt or encrypted file is one named skip. The files are written by the tests."""

from __future__ import annotations

import io
import os
import time

import pytest

from llama_index_twostage.ingest.files import read_files
from llama_index_twostage.pipeline import TwoStagePipeline

pytestmark = pytest.mark.integration

PAGES = ["Page one is about granite.", "Page two mentions basalt and lava.", "Page three covers volcanic ash."]
HTML = """<!DOCTYPE html><html><head><meta charset="windows-1252"><title>Tides</title>
<style>p { color: red; }</style><script>var hidden = "never read";</script></head>
<body><h1>Tides</h1><p>The moon pulls the oceans: a café owner's <b>tide table</b>.</p><noscript>enable js</noscript>
</body></html>"""


def pdf_bytes(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def encrypted(data: bytes) -> bytes:
    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.encrypt("a user password")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def documents_folder(tmp_path):
    import docx

    folder = tmp_path / "library"
    folder.mkdir()
    report = pdf_bytes(PAGES)
    (folder / "report.pdf").write_bytes(report)
    (folder / "locked.pdf").write_bytes(encrypted(report))
    (folder / "broken.pdf").write_bytes(report[: len(report) // 2])
    letter = docx.Document()
    letter.add_heading("Field notes", level=1)
    letter.add_paragraph("Obsidian forms when lava cools quickly. Señora Núñez found some.")
    letter.save(folder / "letter.docx")
    (folder / "tides.html").write_bytes(HTML.encode("cp1252"))
    (folder / "notes.md").write_text("# Rocks\n\nPumice floats on water.\n", encoding="utf-8")
    return folder


def test_each_format_reads_as_its_text(documents_folder):
    read = read_files(documents_folder)
    texts = {document.id_: document.text for document in read.documents}
    assert sorted(texts) == [
        "library/letter.docx",
        "library/notes.md",
        "library/report.pdf#page=1",
        "library/report.pdf#page=2",
        "library/report.pdf#page=3",
        "library/tides.html",
    ]
    for number, text in enumerate(PAGES, 1):
        page = next(d for d in read.documents if d.id_ == f"library/report.pdf#page={number}")
        assert page.text.strip() == text
        assert page.metadata["page_label"] == str(number) and page.metadata["file_path"] == "library/report.pdf"
        assert "page_label" in page.excluded_embed_metadata_keys and "page_label" not in page.excluded_llm_metadata_keys
    assert "Field notes" in texts["library/letter.docx"] and "Señora Núñez" in texts["library/letter.docx"]
    assert texts["library/tides.html"] == "Tides\nThe moon pulls the oceans: a café owner's\ntide table\n."
    assert texts["library/notes.md"] == "# Rocks\n\nPumice floats on water.\n"
    assert read.skipped["library/locked.pdf"].startswith("encrypted PDF: decrypt it")
    assert read.skipped["library/broken.pdf"].startswith("unreadable PDF (")
    assert len(read.skipped) == 2


def test_a_folder_of_documents_ingests_once_cites_pages_and_a_touch_re_embeds_nothing(
    documents_folder, cheap_settings, hash_embedding
):
    settings = cheap_settings(stage1_mode="lexical", recall_k=3, top_k=3)
    with TwoStagePipeline(settings, embed_model=hash_embedding) as pipeline:
        first = pipeline.ingest(read_files(documents_folder).documents)
        assert (first.documents, first.added) == (6, 6)
        (best, *_) = pipeline.retriever().retrieve("basalt lava")
        assert best.node.ref_doc_id == "library/report.pdf#page=2" and best.node.metadata["page_label"] == "2"

        later = time.time() + 86400 * 3
        for file in documents_folder.iterdir():
            os.utime(file, (later, later))
        embedded = len(hash_embedding.embedded)
        touched = pipeline.ingest(read_files(documents_folder).documents)
        assert (touched.added, touched.stored_total, len(hash_embedding.embedded)) == (0, 6, embedded)
