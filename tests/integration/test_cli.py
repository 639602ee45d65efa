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
    assert lines[-1].startswith("stage 1 (hybrid): ") and "stage 2: " in lines[-1] and "for 3 pairs" in lines[-1]

    info = invoke(runner, "info")
    assert info.exit_code == 0, info.output
    assert "collection:      cli-docs" in info.output
    assert "nodes:           3" in info.output
    assert "embedding model: " in info.output and "all-MiniLM-L6-v2" in info.output
    assert "embed backend:   torch\n" in info.output  # the runtime that wrote it (TWOSTAGE_EMBED_BACKEND, conftest)
    assert "dimension:       384" in info.output
    assert "distance space:  cosine" in info.output
    assert "reranker reads:  the text the bi-encoder embedded" in info.output


def test_info_says_what_the_reranker_reads(runner, cli_env, text_folder, monkeypatch):
    assert invoke(runner, "ingest", str(text_folder)).exit_code == 0
    monkeypatch.setenv("TWOSTAGE_RERANK_METADATA_KEYS", "title,section")
    monkeypatch.setenv("TWOSTAGE_RERANK_QUERY_TEMPLATE", "query: {query}")
    monkeypatch.setenv("TWOSTAGE_RERANK_LONG_DOCUMENTS", "max-window")
    info = invoke(runner, "info")
    assert info.exit_code == 0, info.output
    assert "reranker reads:  metadata ['title', 'section'] and the text; query 'query: {query}'" in info.output
    assert "long documents:  max-window" in info.output


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


# --- every bad input: one line, exit 2, nothing written (issue 15) -------------------------------------------------


def test_an_empty_folder_is_one_line_exit_2(runner, cli_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(runner, "ingest", str(empty))
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: no documents to ingest: the folder {str(empty)!r} holds no files"]


@pytest.mark.parametrize("limit", ["0", "-2"])
def test_a_limit_below_one_is_refused(runner, cli_env, text_folder, tmp_path, limit):
    result = invoke(runner, "ingest", str(text_folder), "--limit", limit)
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: --limit must be at least 1, got {limit}: leave it out to ingest every document"
    ]
    assert not (tmp_path / "chroma").exists()  # nothing written


@pytest.mark.parametrize("command", [["info"], ["query", "anything"], ["verify"]])
def test_read_only_commands_write_nothing_into_a_folder_that_is_no_store(runner, cli_env, tmp_path, command):
    folder = tmp_path / "not-a-store"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's own files")
    result = invoke(runner, *command, "--persist-dir", str(folder))
    assert result.exit_code == 2
    assert "no embedded Chroma store at" in error_lines(result)[0]
    assert [path.name for path in folder.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [('collection = "unterminated\n', "is not valid TOML"), (None, "is a folder"), ("missing", "does not exist")],
)
def test_a_bad_config_file_is_one_line_exit_2(runner, cli_env, tmp_path, content, reason):
    config = tmp_path / "settings.toml"
    if content is None:
        config = tmp_path
    elif content != "missing":
        config.write_text(content)
    result = invoke(runner, "info", "--config", str(config))
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and reason in lines[0]


def test_query_renders_control_characters_visibly(runner, cli_env, tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    calm = "A volcano erupts when magma rises through the crust and escapes as lava and ash. "
    (folder / "hostile.txt").write_text("Volcano \x1b]0;owned\x07 erupts \x1b[2J lava\u200b ash. " + calm)
    assert invoke(runner, "ingest", str(folder)).exit_code == 0
    result = invoke(runner, "query", "volcano lava")
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\u200b" not in result.stdout
    assert "\\x1b]0;owned\\x07 erupts \\x1b[2J lava\\u200b ash." in result.stdout


@pytest.fixture
def tiny_beir(tmp_path):
    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "Cats purr."}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "what purrs"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


@pytest.mark.parametrize(
    ("extra", "reason"),
    [(["--limit", "0"], "the query limit must be at least 1, got 0"), (["--limit", "-1"], "at least 1, got -1")],
)
def test_eval_refuses_a_limit_below_one_before_any_work(runner, cli_env, tiny_beir, tmp_path, extra, reason):
    result = invoke(runner, "eval", str(tiny_beir), "--out", str(tmp_path / "report"), *extra)
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and reason in lines[0]
    assert not (tmp_path / "chroma").exists() and not (tmp_path / "report").exists()


def test_eval_refuses_an_out_path_that_is_a_file_before_any_work(runner, cli_env, tiny_beir, tmp_path):
    taken = tmp_path / "report.txt"
    taken.write_text("not a folder")
    result = invoke(runner, "eval", str(tiny_beir), "--out", str(taken))
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: --out {str(taken)!r} is a file: give a folder for the report files"]
    assert not (tmp_path / "chroma").exists()


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["query", "anything", "--no-such-flag"], "error: No such option: --no-such-flag"),
        (["ingest"], "error: Missing argument 'path'"),
        (["ingestt", "x"], "error: No such command 'ingestt'"),
    ],
)
def test_usage_errors_are_one_line_that_starts_with_the_reason(runner, cli_env, args, reason):
    result = invoke(runner, *args)
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(reason), lines


def test_eval_of_a_dataset_with_no_evaluable_query_says_why(runner, cli_env, tiny_beir, tmp_path):
    (tiny_beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tghost\t1\n")
    result = invoke(runner, "eval", str(tiny_beir), "--out", str(tmp_path / "report"))
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1
    assert "tiny: no query can be evaluated: the judgments point to 1 documents missing from the corpus" in lines[0]
    assert not (tmp_path / "report").exists()


def test_an_empty_persist_dir_variable_reads_the_current_folder_without_writing(runner, cli_env, tmp_path, monkeypatch):
    here = tmp_path / "working-directory"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("TWOSTAGE_PERSIST_DIR", "")
    result = invoke(runner, "info")
    assert result.exit_code == 2
    assert "no embedded Chroma store at '.'" in error_lines(result)[0]
    assert list(here.iterdir()) == []
