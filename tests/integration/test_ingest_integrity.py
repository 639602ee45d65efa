"""Ingestion integrity: changed documents replace their chunks, unchanged ones are skipped by hash, an interrupted
run is completed by the next one, and `twostage verify` names what is inconsistent."""

from __future__ import annotations

import pytest
from llama_index.core import Document
from typer.testing import CliRunner

from llama_index_twostage.cli import app
from llama_index_twostage.errors import DocumentError
from llama_index_twostage.pipeline import TwoStagePipeline, ingest_documents, verify_collection_integrity
from llama_index_twostage.store import ChromaStore
from llama_index_twostage.store.contract import HASH_KEY, STAMP_KEY

pytestmark = pytest.mark.integration


def paragraph(i: int) -> str:
    return f"Paragraph {i} is about topic number {i}, described in enough words to fill a small chunk of text."


def article(*paragraphs: int, doc_id: str = "article") -> Document:
    return Document(id_=doc_id, text="\n\n".join(map(paragraph, paragraphs)), metadata={"source": "test"})


def corpus() -> list[Document]:
    return [article(0, 1, 2, 3), Document(id_="note", text="A short note that never changes.")]


@pytest.fixture
def settings(cheap_settings):
    return cheap_settings(chunk_size=32, chunk_overlap=0)


def collection_of(settings):
    """The settings' collection, read directly through a store of its own (left open for the test to use)."""
    return ChromaStore(settings.collection, settings.chroma).open_collection()


def chunks_by_source(settings) -> dict[str, dict[str, dict]]:
    """source id -> chunk id -> the chunk's stored metadata."""
    stored = collection_of(settings).get(include=["metadatas"])
    by_source: dict[str, dict[str, dict]] = {}
    for node_id, metadata in zip(stored["ids"], stored["metadatas"]):
        by_source.setdefault(metadata["ref_doc_id"], {})[node_id] = metadata
    return by_source


def stored_ids(settings) -> dict[str, set[str]]:
    """source id -> its chunk ids."""
    return {source: set(chunks) for source, chunks in chunks_by_source(settings).items()}


def clean_run_ids(documents, settings, embed_model) -> dict[str, set[str]]:
    """What a single run into a fresh collection stores for these documents."""
    fresh = settings.model_copy(update={"collection": settings.collection + "-clean"})
    ingest_documents(documents, fresh, embed_model=embed_model)
    return stored_ids(fresh)


def test_unchanged_documents_are_neither_embedded_nor_rewritten(settings, hash_embedding):
    first = ingest_documents(corpus(), settings, embed_model=hash_embedding)
    before = chunks_by_source(settings)
    embedded = len(hash_embedding.embedded)
    again = ingest_documents(corpus(), settings, embed_model=hash_embedding)
    assert len(hash_embedding.embedded) == embedded
    assert chunks_by_source(settings) == before  # same ids, same stamps: nothing rewritten
    assert (again.unchanged_documents, again.added, again.removed_stale) == (2, 0, 0)
    assert again.already_stored == again.chunks == first.added == first.stored_total
    assert len(before["article"]) > 2


def test_changed_document_replaces_its_stale_chunks(settings, hash_embedding):
    ingest_documents(corpus(), settings, embed_model=hash_embedding)
    old = chunks_by_source(settings)
    changed = [article(0, 1, 7), corpus()[1]]
    report = ingest_documents(changed, settings, embed_model=hash_embedding)
    now = chunks_by_source(settings)
    assert stored_ids(settings) == clean_run_ids(changed, settings, hash_embedding)
    assert now["note"] == old["note"]
    kept = set(old["article"]) & set(now["article"])
    assert kept and report.removed_stale == len(set(old["article"]) - kept) > 0
    assert len({metadata[HASH_KEY] for metadata in now["article"].values()}) == 1  # kept chunks relabelled
    assert (report.replaced_documents, report.unchanged_documents) == (1, 1)
    assert report.added + report.already_stored + report.skipped_empty == report.chunks
    assert verify_collection_integrity(settings).ok


def test_chunking_change_rechunks_every_document(settings, hash_embedding):
    ingest_documents(corpus(), settings, embed_model=hash_embedding)
    rechunked = settings.model_copy(update={"chunk_size": 200})
    report = ingest_documents(corpus(), rechunked, embed_model=hash_embedding)
    # At 32 tokens the article is 4 chunks, at 200 one; the note is one chunk either way (same id: already stored).
    assert (report.unchanged_documents, report.replaced_documents, report.removed_stale) == (0, 2, 4)
    assert (report.added, report.already_stored, report.stored_total) == (1, 1, 2)
    assert verify_collection_integrity(rechunked).ok


class CrashingStore(ChromaStore):
    """A real store that dies (KeyboardInterrupt, as a kill would) on its ``crash_after + 1``-th ``operation``."""

    def __init__(self, settings, operation: str, crash_after: int = 0) -> None:
        super().__init__(settings.collection, mode=settings.chroma_mode)
        self.operation, self.crash_after, self.calls = operation, crash_after, 0

    def with_retries(self, operation):
        if getattr(operation, "func", operation).__name__ == self.operation:  # e.g. partial(collection.delete)
            self.calls += 1
            if self.calls > self.crash_after:
                raise KeyboardInterrupt(f"crashed at {self.operation} number {self.calls}")
        return super().with_retries(operation)


def ingest_through(store: ChromaStore, documents, settings, embed_model):
    return TwoStagePipeline(settings, embed_model=embed_model, store=store).ingest(documents)


def test_run_interrupted_before_deleting_stale_chunks_is_completed(settings, hash_embedding):
    ingest_documents(corpus(), settings, embed_model=hash_embedding)
    changed = [article(2, 5, 6), corpus()[1]]
    with pytest.raises(KeyboardInterrupt):  # between writing the new chunks and deleting the stale ones
        ingest_through(CrashingStore(settings, "delete"), changed, settings, hash_embedding)
    interrupted = verify_collection_integrity(settings)
    assert interrupted.orphans and not interrupted.ok
    assert any("stale chunks" in problem for problem in interrupted.problems)
    report = ingest_documents(changed, settings, embed_model=hash_embedding)
    assert report.added == 0 and report.removed_stale == len(interrupted.orphans)
    assert stored_ids(settings) == clean_run_ids(changed, settings, hash_embedding)
    assert verify_collection_integrity(settings).ok


def test_run_interrupted_mid_upsert_is_completed(settings, hash_embedding):
    small_batches = settings.model_copy(update={"upsert_batch_size": 2})
    with pytest.raises(KeyboardInterrupt):  # after the first batch of two chunks
        ingest_through(CrashingStore(small_batches, "upsert", crash_after=1), corpus(), small_batches, hash_embedding)
    assert verify_collection_integrity(small_batches).incomplete_sources == ["article"]
    report = ingest_documents(corpus(), small_batches, embed_model=hash_embedding)
    assert report.already_stored == 2 and report.added == report.chunks - 2
    assert stored_ids(settings) == clean_run_ids(corpus(), settings, hash_embedding)
    assert verify_collection_integrity(small_batches).ok


def test_verify_names_sourceless_chunks_and_another_model(settings, hash_embedding):
    ingest_documents(corpus(), settings, embed_model=hash_embedding)
    collection = collection_of(settings)
    collection.add(ids=["stray"], embeddings=[hash_embedding.get_text_embedding("stray")], documents=["stray"])
    report = verify_collection_integrity(settings)
    assert report.sourceless == ["stray"] and report.nodes == collection.count()
    assert not report.orphans and report.contract_problem is None
    other = verify_collection_integrity(settings.model_copy(update={"embed_model": "org/another-model"}))
    assert "org/another-model" in (other.contract_problem or "")


def test_stamps_are_per_run(settings, hash_embedding):
    ingest_documents(corpus()[:1], settings, embed_model=hash_embedding)
    ingest_documents(corpus(), settings, embed_model=hash_embedding)
    stamps = {source: {m[STAMP_KEY] for m in chunks.values()} for source, chunks in chunks_by_source(settings).items()}
    assert len(stamps["article"]) == len(stamps["note"]) == 1 and stamps["article"] != stamps["note"]


def test_documents_sharing_an_id_with_different_content_are_refused(settings, hash_embedding):
    with pytest.raises(DocumentError, match="'article'"):
        ingest_documents([article(0), article(1)], settings, embed_model=hash_embedding)
    report = ingest_documents([article(0), article(0)], settings, embed_model=hash_embedding)
    assert report.stored_total == report.added > 0


def test_cli_verify_exit_codes(cheap_settings, tmp_path, twostage_env, embed_model_dir):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(paragraph(1))
    (folder / "b.txt").write_text(paragraph(2))
    twostage_env(persist_dir=tmp_path / "chroma", embed_model=embed_model_dir, collection="verify-cli")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(folder)], catch_exceptions=False).exit_code == 0
    healthy = runner.invoke(app, ["verify"], catch_exceptions=False)
    assert healthy.exit_code == 0 and "ok: no problems found" in healthy.stdout
    assert "2 nodes from 2 documents" in healthy.stdout
    settings = cheap_settings("embedded", "verify-cli", persist_dir=tmp_path / "chroma")
    collection_of(settings).add(ids=["stray"], embeddings=[[0.0] * 383 + [1.0]], documents=["stray"])
    broken = runner.invoke(app, ["verify"], catch_exceptions=False)
    assert broken.exit_code == 1 and "1 chunks without a source document id: stray" in broken.stdout
    missing = runner.invoke(app, ["verify", "--collection", "never-ingested"], catch_exceptions=False)
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_texts_are_embedded_longest_first_and_each_vector_stays_with_its_chunk(cheap_settings, hash_embedding):
    """Ingestion orders each upsert batch by length (less padding); the ordering must never mix up vectors."""
    documents = [Document(id_=f"d{n}", text=" ".join(f"word{i}" for i in range(n))) for n in (3, 40, 1, 17, 25, 8)]
    settings = cheap_settings(collection="by-length", chunk_size=512, chunk_overlap=0, upsert_batch_size=4)
    ingest_documents(documents, settings, embed_model=hash_embedding)
    first_batch, second_batch = hash_embedding.embedded[:4], hash_embedding.embedded[4:]
    assert [len(text) for text in first_batch] == sorted(map(len, first_batch), reverse=True)
    assert [len(text) for text in second_batch] == sorted(map(len, second_batch), reverse=True)
    stored = collection_of(settings).get(include=["documents", "embeddings"])
    assert len(stored["ids"]) == len(documents)
    for document, embedding in zip(stored["documents"], stored["embeddings"]):
        assert list(embedding) == pytest.approx(hash_embedding.get_text_embedding(document), abs=1e-6)
