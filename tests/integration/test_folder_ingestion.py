"""Folders read as a user means them: only changed chunks re-embedded, ids that survive a move, text decoded right,
what is not text skipped and named (issue 15, items 1-3)."""

from __future__ import annotations

import os
import random
import time

import pytest
from llama_index.core import Document
from typer.testing import CliRunner

from llama_index_twostage.cli import app
from llama_index_twostage.errors import DocumentError
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
    first = ingest(pipeline, read_files(folder))
    through_link = ingest(pipeline, read_files(tmp_path / "link"))
    monkeypatch.chdir(tmp_path)
    relative = ingest(pipeline, read_files(tmp_path.joinpath("docs").relative_to(tmp_path)))
    assert through_link.added == relative.added == 0
    assert through_link.stored_total == relative.stored_total == first.stored_total
    assert {metadata["ref_doc_id"] for metadata in stored(pipeline).values()} == {"docs/a.txt", "docs/b.txt"}


def ingest(pipeline, read, sync: bool = False):
    return pipeline.ingest(read.documents, source=read.source, sync=sync)


def folder_of(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_two_folders_of_one_name_never_share_ids(pipeline, tmp_path):
    """Issue 20 item 6: projA/docs, then projB/docs: the second is refused (naming --source), never a silent
    replacement; named, it gets ids of its own, and one name for two folders is one source."""
    first = folder_of(tmp_path / "projA" / "docs", {"notes.txt": "A's notes about vitamins."})
    second = folder_of(tmp_path / "projB" / "docs", {"notes.txt": "B's notes about fractures."})
    ingest(pipeline, read_files(first))
    with pytest.raises(DocumentError, match="--source NAME"):
        ingest(pipeline, read_files(second))
    ingest(pipeline, read_files(second, source="projB-docs"))
    texts = {metadata["ref_doc_id"] for metadata in stored(pipeline).values()}
    assert texts == {"docs/notes.txt", "projB-docs/notes.txt"}
    with pytest.raises(DocumentError, match="source"):
        read_files(second, source="a/b")


def test_sync_deletes_files_that_are_gone_and_a_moved_file_keeps_its_embeddings(pipeline, hash_embedding, tmp_path):
    """Issue 20 item 5: --sync deletes what is gone (both indexes); a renamed file's chunks reuse their embeddings."""
    folder = folder_of(
        tmp_path / "docs",
        {name: f"{name}: " + " ".join(SENTENCES[i * 20 : i * 20 + 20]) for i, name in enumerate(["a", "b", "c"])},
    )
    first = ingest(pipeline, read_files(folder), sync=True)
    (folder / "c").unlink()
    (folder / "sub").mkdir()
    (folder / "b").rename(folder / "sub" / "b")
    embedded = len(hash_embedding.embedded)
    report = ingest(pipeline, read_files(folder), sync=True)
    assert report.deleted_documents == 2 and report.added == report.reused_embeddings > 0
    assert len(hash_embedding.embedded) == embedded  # the moved file was not embedded again
    assert {metadata["ref_doc_id"] for metadata in stored(pipeline).values()} == {"docs/a", "docs/sub/b"}
    assert report.stored_total < first.stored_total and pipeline.verify().ok  # the lexical index followed


def test_a_moved_folder_is_named_to_keep_its_ids(pipeline, tmp_path):
    """A default source is the folder's location: moved, it must be named (--source keeps the ids), and --sync then
    also deletes the documents the old location held and the new one lacks."""
    folder = folder_of(tmp_path / "old" / "docs", {"a.txt": "Alpha words here.", "b.txt": "Beta words here."})
    ingest(pipeline, read_files(folder))
    moved = tmp_path / "new" / "docs"
    moved.parent.mkdir()
    folder.rename(moved)
    (moved / "b.txt").unlink()
    with pytest.raises(DocumentError, match="same folder moved"):
        ingest(pipeline, read_files(moved))
    report = ingest(pipeline, read_files(moved, source="docs"), sync=True)
    assert report.added == 0 and report.deleted_documents == 1
    assert {metadata["twostage_source"] for metadata in stored(pipeline).values()} == {"docs"}


async def test_delete_removes_documents_from_both_indexes(pipeline):
    """Issue 20 item 5: ``delete`` / ``adelete`` (LlamaIndex's delete_ref_doc, for several ids)."""
    pipeline.ingest([Document(id_=name, text=f"{name} words about vitamin code{name}") for name in "abc"])
    report = pipeline.delete(["a", "unknown"])
    assert (report.documents, report.chunks, report.stored_total) == (1, 1, 2)
    assert (await pipeline.adelete("b")).chunks == 1
    assert {metadata["ref_doc_id"] for metadata in stored(pipeline).values()} == {"c"}
    assert pipeline.lexical.count() == 1 and pipeline.verify().ok


def test_cli_delete_and_ingest_sync(tmp_path, twostage_env, embed_model_dir):
    folder = folder_of(tmp_path / "docs", {"a.txt": "Alpha words.", "b.txt": "Beta words.", "c.txt": "Gamma words."})
    twostage_env(persist_dir=tmp_path / "chroma", embed_model=embed_model_dir, collection="docs")
    assert CliRunner().invoke(app, ["ingest", str(folder)]).exit_code == 0
    deleted = CliRunner().invoke(app, ["delete", "docs/a.txt", "docs/nope.txt"])
    assert deleted.exit_code == 0 and "1 of 2 documents found, 1 chunks deleted" in deleted.stdout
    (folder / "b.txt").unlink()
    synced = CliRunner().invoke(app, ["ingest", str(folder), "--sync"])
    assert synced.exit_code == 0 and "1 documents whose files are gone deleted" in synced.stdout
    refused = CliRunner().invoke(app, ["ingest", str(folder / "c.txt"), "--sync"])
    assert refused.exit_code == 2 and "--sync needs a whole folder" in refused.output
    with ChromaStore("docs", persist_dir=tmp_path / "chroma") as store:
        documents = store.open_collection().get(include=["documents"])["documents"]
    assert sorted(documents) == ["Alpha words.", "Gamma words."]  # a.txt is still in the folder: ingested again


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


@pytest.mark.parametrize("sync", [False, True])
def test_a_document_emptied_since_it_was_stored_loses_its_chunks(cheap_settings, hash_embedding, sync):
    """Its text is gone, so what it said before must not be retrieved any more (with or without sync)."""
    from llama_index.core import Document

    edited = {"source": "notes", "sync": True} if sync else {}
    with TwoStagePipeline(cheap_settings(), embed_model=hash_embedding) as pipeline:
        pipeline.ingest([Document(id_="kept", text="Kept words."), Document(id_="edited", text="Old words.")], **edited)
        report = pipeline.ingest([Document(id_="kept", text="Kept words."), Document(id_="edited", text=" ")], **edited)
        assert (report.empty_documents, report.replaced_documents, report.removed_stale) == (1, 1, 1)
        assert (report.unchanged_documents, report.deleted_documents, report.stored_total) == (1, 0, 1)
        stored = pipeline.store.open_collection().get(include=["metadatas"])
        assert {metadata["ref_doc_id"] for metadata in stored["metadatas"]} == {"kept"}


def test_a_document_without_text_is_still_checked_before_anything_is_written(cheap_settings, hash_embedding):
    from llama_index.core import Document

    from llama_index_twostage.errors import DocumentError

    documents = [Document(id_="real", text="Words."), Document(id_="blank", text=" ", metadata={"$bad": 1})]
    with TwoStagePipeline(cheap_settings(), embed_model=hash_embedding) as pipeline:
        with pytest.raises(DocumentError, match="'blank'"):
            pipeline.ingest(documents)
        assert hash_embedding.embedded == []  # refused whole: nothing embedded or written
