"""Two indexes, one truth, several processes and hosts (issue 20): each invariant on real processes, a real
`chroma run` and different working directories as hosts (a server's lexical index lives under each host's
``./.twostage``). Documents are tiny and embedded by the cheap hash embedding: no model is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llama_index.core import Document

from llama_index_twostage.errors import LexicalIndexError
from llama_index_twostage.pipeline import TwoStagePipeline
from llama_index_twostage.store import reconcile
from llama_index_twostage.store.reconcile import LexicalDrift, repair

sys.path.insert(0, str(Path(__file__).parent))
from host import article  # noqa: E402

pytestmark = pytest.mark.integration

HOST = Path(__file__).with_name("host.py")


def run_host(host: Path, settings, action: str, *args: object, timeout: float = 120) -> dict:
    """One process on ``host``: its JSON answer (the test fails with its stderr when it fails)."""
    host.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, str(HOST), settings.model_dump_json(), action, *map(str, args)],
        cwd=host,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_host(host: Path, settings, action: str, *args: object) -> subprocess.Popen[str]:
    host.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(HOST), settings.model_dump_json(), action, *map(str, args)],
        cwd=host,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def answer(process: subprocess.Popen[str], timeout: float = 120) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def server_settings(chroma_server, cheap_settings):
    """Settings for a fresh collection on the session's `chroma run`; the lexical index in each host's default
    folder (relative to its working directory), refreshed before every query."""
    host, port = chroma_server
    return cheap_settings(
        "server", chroma_host=host, chroma_port=port, chunk_size=32, chunk_overlap=0, recall_k=10, lexical_refresh_s=0
    )


@pytest.fixture
def host_a(tmp_path, monkeypatch) -> Path:
    """This test process runs as host A."""
    folder = tmp_path / "host-a"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_another_host_sees_a_replacement_and_a_deletion(server_settings, host_a, tmp_path, hash_embedding):
    """Issue item 1: host B replaces a document (same chunk count) and deletes another; a long-lived retriever on
    host A, and a fresh process on A, find B's new text and lose the deleted one; verify on A is clean."""
    host_b = tmp_path / "host-b"
    with TwoStagePipeline(server_settings, embed_model=hash_embedding) as pipeline:
        pipeline.ingest([article(i) for i in range(6)])
        assert run_host(host_b, server_settings, "ingest", 0, *range(6))["added"] == 0  # B builds its index from Chroma
        retriever = pipeline.retriever(stage1_mode="lexical")
        assert len(retriever.retrieve("code3 word0")) == 10
        before = pipeline.lexical.count()
        assert run_host(host_b, server_settings, "ingest", 1, 3)["replaced_documents"] == 1
        assert run_host(host_b, server_settings, "delete", "doc-5")["chunks"] == 3
        found = {scored.node.node_id for scored in retriever.retrieve("word1")}
        replaced = set(pipeline.store.open_collection().get(where={"ref_doc_id": "doc-3"})["ids"])
        assert found == replaced and len(replaced) == 3  # the long-lived retriever sees B's new text
        assert pipeline.lexical.count() == before - 3  # and B's deletion
        assert pipeline.verify().ok
    assert set(run_host(host_a, server_settings, "query", "word1")["ids"]) == replaced  # a fresh process on A too


def test_reconcile_never_deletes_a_record_chroma_holds(server_settings, host_a, hash_embedding):
    """Issue item 2: another process adds a record while a reconcile runs; the reconcile must not delete it."""
    with TwoStagePipeline(server_settings, embed_model=hash_embedding) as pipeline:
        pipeline.ingest([article(0), article(1)])
        collection = pipeline.store.open_collection()
        scan = pipeline.store.pages

        def scan_between_writers(*args, **kwargs):
            # another process of this host writes (Chroma, then this host's index) before and after Chroma's scan:
            # whichever index is read second, one of the two records lands between the reads
            run_host(host_a, server_settings, "ingest", 0, 7)
            yield from scan(*args, **kwargs)
            run_host(host_a, server_settings, "ingest", 0, 8)

        pipeline.store.pages = scan_between_writers  # type: ignore[method-assign]
        reconcile(pipeline.store, collection, pipeline.lexical, page_size=100)
        pipeline.store.pages = scan  # type: ignore[method-assign]
        added = collection.get(where={"ref_doc_id": {"$in": ["doc-7", "doc-8"]}})["ids"]
        assert len(added) == 6 and set(added) <= set(pipeline.lexical.versions())
        # A drift computed before the record existed names it extra: the repair looks it up and keeps it.
        stale = LexicalDrift(chroma_records=0, lexical_records=0, missing=[], extra=added, changed=[])
        assert repair(pipeline.store, collection, pipeline.lexical, stale) == 0
        assert set(added) <= set(pipeline.lexical.versions()) and pipeline.verify().ok


def test_reindex_swaps_atomically_under_concurrent_queries(server_settings, host_a, hash_embedding):
    """Issue item 3: a process on the same host queries in a loop while this one reindexes three times: every
    answer is the full one, never a partial or empty index."""
    with TwoStagePipeline(server_settings, embed_model=hash_embedding) as pipeline:
        pipeline.ingest([article(i) for i in range(8)])
        watcher = start_host(host_a, server_settings, "watch", "marker report", 8)
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"
        for _ in range(3):
            assert pipeline.reindex() == 24
        generations = [entry for entry in pipeline.lexical.path.iterdir() if entry.name.startswith("gen-")]
    hits = answer(watcher)["hits"]
    assert len(hits) > 5 and set(hits) == {10}
    assert len(generations) == 2  # the live one and the one before it; older ones removed


def test_queries_never_wait_for_the_writer_lock_and_catch_up_later(server_settings, host_a, tmp_path):
    """Issue item 4: while another process holds this host's writer lock, a fresh process's query answers from what
    the index holds; once the lock is free, the next query catches up."""
    run_host(host_a, server_settings, "ingest", 0, *range(4))
    holder = start_host(host_a, server_settings, "hold", 20)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    run_host(tmp_path / "host-b", server_settings, "ingest", 2, 1)  # another host changes doc-1
    started = time.monotonic()
    assert run_host(host_a, server_settings, "query", "word2")["ids"] == []  # answers from what it has, without waiting
    assert time.monotonic() - started < 15
    holder.terminate()
    holder.wait(timeout=30)
    assert len(run_host(host_a, server_settings, "query", "word2")["ids"]) == 3  # caught up


def test_read_only_commands_create_nothing(server_settings, tmp_path, rerank_model_dir):
    """Issue item 4: info, verify and query on a host that never wrote create no folder there (the CLI, as a
    separate process in a fresh working directory)."""
    run_host(tmp_path / "writer", server_settings, "ingest", 0, 0, 1)
    fresh = tmp_path / "reader"
    fresh.mkdir()
    env = {
        **os.environ,
        "TWOSTAGE_CHROMA_HOST": server_settings.chroma_host,
        "TWOSTAGE_CHROMA_PORT": str(server_settings.chroma_port),
        "TWOSTAGE_COLLECTION": server_settings.collection,
        "TWOSTAGE_EMBED_MODEL": "test/hash-embedding",
        "TWOSTAGE_RERANK_MODEL": rerank_model_dir,
        "TWOSTAGE_RERANK_BACKEND": "torch",
        "TWOSTAGE_LEXICAL_DIR": "",  # empty: the default location, never the working directory
        "TWOSTAGE_SHOW_PROGRESS": "false",
    }
    twostage = Path(sys.executable).with_name("twostage")
    shown = subprocess.run([str(twostage), "info"], cwd=fresh, env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "lexical index:   0 records" in shown.stdout, shown.stderr
    verified = subprocess.run([str(twostage), "verify"], cwd=fresh, env=env, capture_output=True, text=True)
    assert verified.returncode == 1 and "6 records missing from the lexical index" in verified.stdout
    queried = subprocess.run(
        [sys.executable, str(HOST), server_settings.model_dump_json(), "query", "code1"], cwd=fresh, capture_output=True
    )
    assert queried.returncode != 0 and b"twostage reindex" in queried.stderr
    assert list(fresh.iterdir()) == []


def test_the_library_writes_only_into_its_own_folders(cheap_settings, hash_embedding, tmp_path, monkeypatch):
    """Issue item 7: ``lexical_dir=.`` beside the user's ``./docs`` is refused, the user's files untouched; an empty
    lexical_dir is the default; a reindex removes only the library's own generations."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("the user's own notes")
    settings = cheap_settings("embedded", "docs", persist_dir=tmp_path / "chroma", lexical_dir=Path("."))
    with TwoStagePipeline(settings, embed_model=hash_embedding) as pipeline:
        with pytest.raises(LexicalIndexError, match="twostage did not create"):
            pipeline.ingest([Document(id_="a", text="words to index")])
    assert [entry.name for entry in (tmp_path / "docs").iterdir()] == ["notes.txt"]
    default = cheap_settings("embedded", "docs", persist_dir=tmp_path / "chroma", lexical_dir="")
    assert default.lexical_dir is None
    with TwoStagePipeline(default, embed_model=hash_embedding) as pipeline:
        pipeline.ingest([Document(id_="a", text="words to index")])
        pipeline.reindex()
        pipeline.reindex()
        own = pipeline.lexical.path
        assert own.parent == tmp_path / "chroma" / "twostage-lexical"
        assert sorted(entry.name.split("-")[0] for entry in own.iterdir()) == [".twostage", "CURRENT", "gen", "gen"]
    assert (tmp_path / "docs" / "notes.txt").read_text() == "the user's own notes"


def test_a_second_process_on_an_embedded_store_is_refused(cheap_settings, hash_embedding, tmp_path):
    """Issue item 8: embedded Chroma caches per process, so a second process is refused with one line naming
    `chroma run`; once the first has closed the store, another process may open it."""
    settings = cheap_settings("embedded", persist_dir=tmp_path / "chroma")
    pipeline = TwoStagePipeline(settings, embed_model=hash_embedding)
    pipeline.ingest([Document(id_="a", text="words to index")])
    refused = subprocess.run(
        [sys.executable, str(HOST), settings.model_dump_json(), "query", "words"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "chroma run" in refused.stderr and "open in another process" in refused.stderr
    pipeline.close()
    assert run_host(tmp_path, settings, "query", "words")["ids"]
