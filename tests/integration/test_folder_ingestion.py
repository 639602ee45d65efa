"""Folders read as a user means them: only changed chunks re-embedded, ids that survive a move, text decoded right,
what is not text skipped and named (issue 15, items 1-3)."""

from __future__ import annotations

import os
import random
import time

import pytest
from typer.testing import CliRunner

from llama_index_twostage.cli import app
from llama_index_twostage.ingest.files import read_files
from llama_index_twostage.pipeline import TwoStagePipeline
from llama_index_twostage.store import ChromaStore

pytestmark = pytest.mark.integration

SENTENCES = [f"Sentence {i} tells of topic {i % 17} in plain words, long enough to matter." for i in range(400)]


@pytest.fixture
def pipeline(cheap_settings, hash_embedding, pipeline_for):
    return pipeline_for(cheap_settings(chunk_size=128, chunk_overlap=16), embed_model=hash_embedding)


def stored(pipeline) -> dict[str, dict]:
    result = pipeline.store.open_collection().get(include=["metadatas"])
    return dict(zip(result["ids"], result["metadatas"]))


def test_touch_reembeds_nothing_and_an_append_only_the_changed_chunks(pipeline, hash_embedding, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    book = folder / "book.txt"
    book.write_text(" ".join(SENTENCES))
    first = pipeline.ingest(read_files(folder).documents)
    assert first.added == len(hash_embedding.embedded) > 10

    two_days_later = time.time() + 2 * 86400
    os.utime(book, (two_days_later, two_days_later))
    embedded_before = len(hash_embedding.embedded)
    touched = pipeline.ingest(read_files(folder).documents)
    assert (touched.added, len(hash_embedding.embedded)) == (0, embedded_before)  # nothing re-embedded
    assert {metadata["last_modified_date"] for metadata in stored(pipeline).values()} == {
        time.strftime("%Y-%m-%d", time.gmtime(two_days_later))
    }  # metadata that is not embedded is updated in place

    book.write_text(" ".join(SENTENCES) + " One more sentence at the end.")
    appended = pipeline.ingest(read_files(folder).documents)
    assert 1 <= appended.added <= 2 and len(hash_embedding.embedded) == embedded_before + appended.added
    assert appended.stored_total == first.stored_total - appended.removed_stale + appended.added


def test_the_same_folder_through_a_symlink_or_another_directory_is_stored_once(pipeline, tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(f"{name}: " + " ".join(SENTENCES[:20]))
    (tmp_path / "link").symlink_to(folder)
    first = pipeline.ingest(read_files(folder).documents)
    through_link = pipeline.ingest(read_files(tmp_path / "link").documents)
    monkeypatch.chdir(tmp_path)
    relative = pipeline.ingest(read_files(tmp_path.joinpath("docs").relative_to(tmp_path)).documents)
    assert through_link.added == relative.added == 0
    assert through_link.stored_total == relative.stored_total == first.stored_total
    assert {metadata["ref_doc_id"] for metadata in stored(pipeline).values()} == {"docs/a.txt", "docs/b.txt"}


@pytest.fixture
def mixed_folder(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    noise = random.Random(7)
    (folder / "random.bin").write_bytes(bytes(noise.randrange(256) for _ in range(4096)))
    (folder / "report.pdf").write_bytes(b"%PDF-1.4\n" + bytes(noise.randrange(256) for _ in range(2048)))
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    (folder / "latin1.txt").write_bytes("Café crème brûlée, señor.".encode("latin-1"))
    (folder / "utf16.txt").write_bytes("Grüße aus Köln: 東京".encode("utf-16"))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.txt").write_text("  \n\t ")
    return folder


def test_text_is_decoded_right_and_what_is_not_text_is_skipped_and_named(mixed_folder):
    read = read_files(mixed_folder)
    assert {document.id_: document.text for document in read.documents} == {
        "mixed/latin1.txt": "Café crème brûlée, señor.",
        "mixed/utf16.txt": "Grüße aus Köln: 東京",
    }
    assert {name: why.split(" ")[0] for name, why in read.skipped.items()} == {
        "mixed/random.bin": "not",
        "mixed/report.pdf": "unreadable",
        "mixed/picture.png": "not",
        "mixed/empty.txt": "empty",
        "mixed/blank.txt": "empty",
    }


def test_cli_ingest_names_the_skipped_files_and_stores_only_text(mixed_folder, tmp_path, twostage_env, embed_model_dir):
    twostage_env(persist_dir=tmp_path / "chroma", embed_model=embed_model_dir, collection="mixed")
    result = CliRunner().invoke(app, ["ingest", str(mixed_folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 documents -> 2 chunks: 2 added" in result.stdout
    assert (
        "5 files skipped (unreadable, not text, or empty): mixed/blank.txt, mixed/empty.txt, mixed/picture.png"
        in result.stdout
    )
    with ChromaStore("mixed", persist_dir=tmp_path / "chroma") as store:
        texts = store.open_collection().get(include=["documents"])["documents"]
    assert sorted(texts) == ["Café crème brûlée, señor.", "Grüße aus Köln: 東京"]


def test_documents_without_text_are_never_stored(cheap_settings, hash_embedding):
    from llama_index.core import Document

    documents = [Document(id_="blank", text="  ", metadata={"file_path": "x"}), Document(id_="real", text="Words.")]
    with TwoStagePipeline(cheap_settings(), embed_model=hash_embedding) as pipeline:
        report = pipeline.ingest(documents)
        assert (report.empty_documents, report.added, report.stored_total) == (1, 1, 1)


def test_a_document_without_text_is_still_checked_before_anything_is_written(cheap_settings, hash_embedding):
    from llama_index.core import Document

    from llama_index_twostage.errors import DocumentError

    documents = [Document(id_="real", text="Words."), Document(id_="blank", text=" ", metadata={"$bad": 1})]
    with TwoStagePipeline(cheap_settings(), embed_model=hash_embedding) as pipeline:
        with pytest.raises(DocumentError, match="'blank'"):
            pipeline.ingest(documents)
        assert hash_embedding.embedded == []  # refused whole: nothing embedded or written
