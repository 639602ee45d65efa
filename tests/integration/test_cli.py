"""The `twostage` CLI end to end: ingest, query, info, and errors as one readable line with exit code 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llama_index_twostage.cli import app

pytestmark = pytest.mark.integration

TEXTS = {
    "volcano.txt": "A volcano erupts when magma rises through the crust and escapes as lava and ash.",
    "insulin.txt": "Insulin is a hormone made by the pancreas; it lowers blood glucose.",
    "tides.txt": "Ocean tides are caused mainly by the gravitational pull of the moon on the oceans.",
}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli_env(monkeypatch, tmp_path, embed_model_dir, rerank_model_dir):
    """Settings through TWOSTAGE_* variables, as a user of the CLI would set them."""
    monkeypatch.setenv("TWOSTAGE_PERSIST_DIR", str(tmp_path / "chroma"))
    monkeypatch.setenv("TWOSTAGE_EMBED_MODEL", embed_model_dir)
    monkeypatch.setenv("TWOSTAGE_RERANK_MODEL", rerank_model_dir)
    monkeypatch.setenv("TWOSTAGE_COLLECTION", "cli-docs")
    monkeypatch.setenv("TWOSTAGE_RECALL_K", "3")
    monkeypatch.setenv("TWOSTAGE_TOP_K", "2")
    monkeypatch.setenv("TWOSTAGE_SHOW_PROGRESS", "false")


@pytest.fixture
def text_folder(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in TEXTS.items():
        (folder / name).write_text(text)
    return folder


def invoke(runner, *args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def error_lines(result) -> list[str]:
    """What the CLI said about the failure (stderr also carries library progress bars, not ours)."""
    assert result.stdout.strip() == ""
    lines = [line for line in result.stderr.strip().splitlines() if "Loading weights" not in line]
    assert lines and lines[0].startswith("error: "), result.stderr
    return lines


def test_ingest_query_info(runner, cli_env, text_folder):
    result = invoke(runner, "ingest", str(text_folder))
    assert result.exit_code == 0, result.output
    assert "3 documents -> 3 chunks: 3 added, 0 already stored; collection 'cli-docs' now holds 3" in result.output

    again = invoke(runner, "ingest", str(text_folder))
    assert "0 added, 3 already stored" in again.output

    query = invoke(runner, "query", "what controls blood sugar?")
    assert query.exit_code == 0, query.output
    lines = query.stdout.strip().splitlines()  # stderr carries the model-loading progress bars
    assert "stage1 -> final" in lines[0] and "rerank score" in lines[0]
    assert len(lines) == 1 + 2 + 1  # header, top_k rows, timings
    assert "-> 1" in lines[1] and "Insulin is a hormone" in lines[1]
    assert lines[-1].startswith("stage 1: ") and "stage 2: " in lines[-1] and "for 3 pairs" in lines[-1]

    info = invoke(runner, "info")
    assert info.exit_code == 0, info.output
    assert "collection:      cli-docs" in info.output
    assert "nodes:           3" in info.output
    assert "embedding model: " in info.output and "all-MiniLM-L6-v2" in info.output
    assert "dimension:       384" in info.output
    assert "distance space:  cosine" in info.output


def test_flags_override_env(runner, cli_env, text_folder, tmp_path):
    result = invoke(runner, "ingest", str(text_folder / "tides.txt"), "--collection", "single-file")
    assert result.exit_code == 0, result.output
    assert "collection 'single-file' now holds 1" in result.output
    info = invoke(runner, "info", "--collection", "single-file")
    assert "nodes:           1" in info.output


def test_ingest_beir_corpus(runner, cli_env, tmp_path):
    corpus = tmp_path / "beir" / "corpus.jsonl"
    corpus.parent.mkdir()
    records = [{"_id": f"d{i}", "title": f"Title {i}", "text": text} for i, text in enumerate(TEXTS.values())]
    corpus.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    result = invoke(runner, "ingest", str(corpus), "--collection", "beir-docs", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "2 documents -> 2 chunks: 2 added" in result.output
    folder = invoke(runner, "ingest", str(corpus.parent), "--collection", "beir-docs")
    assert "3 documents -> 3 chunks: 1 added, 2 already stored" in folder.output


def test_missing_collection_is_one_line_exit_2(runner, cli_env):
    result = invoke(runner, "query", "anything", "--collection", "never-ingested")
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1
    assert lines[0].startswith("error: collection 'never-ingested' does not exist")


def test_recall_k_below_top_k_exits_2(runner, cli_env):
    result = invoke(runner, "query", "anything", "--recall-k", "1", "--top-k", "5")
    assert result.exit_code == 2
    assert "recall_k (1) < top_k (5)" in "\n".join(error_lines(result))


def test_recall_k_below_top_k_is_one_line(runner, cli_env):
    result = invoke(runner, "query", "anything", "--recall-k", "1", "--top-k", "5")
    assert len(error_lines(result)) == 1


def test_bad_env_setting_exits_2(runner, cli_env, monkeypatch):
    monkeypatch.setenv("TWOSTAGE_DEVICE", "gpu")
    result = invoke(runner, "info")
    assert result.exit_code == 2
    assert "unknown device 'gpu'" in "\n".join(error_lines(result))
