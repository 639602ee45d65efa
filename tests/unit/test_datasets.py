"""Dataset loaders on tiny hand-written BEIR folders and QA JSON files."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from llama_index_twostage.errors import ConfigurationError, DocumentError
from llama_index_twostage.evaluation.datasets import (
    DatasetError,
    RetrievalDataset,
    load_beir,
    load_dataset,
    load_llamaindex_qa,
)
from llama_index_twostage.ingest.sources import load_documents

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact"

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr."},
    {"_id": "d2", "title": "", "text": "Dogs bark."},
    {"_id": "d3", "text": "Birds sing."},  # no title key at all
]
QUERIES = [
    {"_id": "1", "text": "what purrs"},
    {"_id": "2", "text": "what barks"},
    {"_id": "3", "text": "train-split query, not judged in test"},
    {"_id": "4", "text": "only a zero-grade judgment"},
]
QRELS = "query-id\tcorpus-id\tscore\n1\td1\t2\n1\td3\t0\n2\td2\t1\n4\td3\t0\n"


def _write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def _write_beir(
    root: Path,
    corpus: Iterable[Mapping[str, Any]] = CORPUS,
    queries: Iterable[Mapping[str, Any]] = QUERIES,
    qrels: str = QRELS,
    split: str = "test",
) -> Path:
    (root / "qrels").mkdir(parents=True)
    _write_jsonl(root / "corpus.jsonl", corpus)
    _write_jsonl(root / "queries.jsonl", queries)
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


def _write_qa(path: Path, **overrides: Any) -> Path:
    data = {
        "queries": {"q1": "what purrs", "q2": "unanswerable"},
        "corpus": {"n1": "Cats purr.", "n2": "Dogs bark."},
        "relevant_docs": {"q1": ["n1"], "q2": []},
        "mode": "text",
    }
    path.write_text(json.dumps({**data, **overrides}))
    return path


def test_load_beir_parses_and_keeps_only_positively_judged_queries(tmp_path: Path) -> None:
    dataset = load_beir(_write_beir(tmp_path / "tiny"))

    assert dataset.name == "tiny"
    assert set(dataset.corpus) == {"d1", "d2", "d3"}
    # "3" is not in the test qrels, "4" has only a zero grade -> both dropped
    assert dataset.queries == {"1": "what purrs", "2": "what barks"}
    assert dataset.qrels == {"1": {"d1": 2, "d3": 0}, "2": {"d2": 1}}


def test_load_beir_joins_title_and_text(tmp_path: Path) -> None:
    corpus = load_beir(_write_beir(tmp_path / "tiny")).corpus

    assert corpus["d1"].id_ == "d1"
    assert corpus["d1"].text == "Cats\nCats purr."
    assert corpus["d1"].metadata == {"title": "Cats"}
    # the title already leads the text, so it must not be prepended again for embedding
    assert "title" in corpus["d1"].excluded_embed_metadata_keys
    # empty or absent title: plain text, no metadata
    assert (corpus["d2"].text, corpus["d2"].metadata) == ("Dogs bark.", {})
    assert (corpus["d3"].text, corpus["d3"].metadata) == ("Birds sing.", {})


def test_load_beir_uses_requested_split(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\n3\td2\t1\n"
    root = _write_beir(tmp_path / "tiny", qrels=qrels, split="train")

    assert load_beir(root, split="train").queries == {"3": "train-split query, not judged in test"}


def test_load_beir_drops_judgments_on_missing_docs_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    qrels = QRELS + "2\tghost\t1\n1\tghost\t1\n"
    with caplog.at_level(logging.WARNING):
        dataset = load_beir(_write_beir(tmp_path / "tiny", qrels=qrels))

    assert dataset.qrels == {"1": {"d1": 2, "d3": 0}, "2": {"d2": 1}}
    assert "ghost" in caplog.text


def test_query_whose_only_relevant_doc_is_missing_is_dropped(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\n1\tghost\t1\n2\td2\t1\n"

    assert list(load_beir(_write_beir(tmp_path / "tiny", qrels=qrels)).queries) == ["2"]


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_load_beir_names_the_missing_file(tmp_path: Path, missing: str) -> None:
    root = _write_beir(tmp_path / "tiny")
    (root / missing).unlink()

    with pytest.raises(DatasetError, match=missing.replace("/", r"[/\\]")) as excinfo:
        load_beir(root)
    assert "corpus.jsonl, <dir>/queries.jsonl" in str(excinfo.value)


def test_malformed_qrels_line_reports_file_and_line(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\tvery\n"

    with pytest.raises(DatasetError, match=r"test\.tsv:3:"):
        load_beir(_write_beir(tmp_path / "tiny", qrels=qrels))


def test_qrels_line_with_wrong_column_count_is_rejected(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\n1 d1 1\n"

    with pytest.raises(DatasetError, match=r"test\.tsv:2:"):
        load_beir(_write_beir(tmp_path / "tiny", qrels=qrels))


def test_malformed_jsonl_line_reports_file_and_line(tmp_path: Path) -> None:
    root = _write_beir(tmp_path / "tiny")
    with (root / "corpus.jsonl").open("a") as handle:
        handle.write("\n{not json\n")  # blank line 4 is skipped, bad JSON on line 5

    with pytest.raises(DatasetError, match=r"corpus\.jsonl:5: invalid JSON"):
        load_beir(root)


def test_jsonl_record_without_id_is_rejected(tmp_path: Path) -> None:
    root = _write_beir(tmp_path / "tiny", queries=[*QUERIES, {"text": "no id"}])

    with pytest.raises(DatasetError, match=r"queries\.jsonl:5: missing field '_id'"):
        load_beir(root)


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_limit_orders_numeric_ids_numerically(tmp_path: Path) -> None:
    ids = ["10", "9", "2", "100"]
    queries = [{"_id": qid, "text": f"query {qid}"} for qid in ids]
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"{qid}\td1\t1\n" for qid in ids)
    dataset = load_beir(_write_beir(tmp_path / "tiny", queries=queries, qrels=qrels))

    limited = dataset.limit(3)

    assert list(limited.queries) == ["2", "9", "10"]  # not "10" < "100" < "2" < "9"
    assert set(limited.qrels) == {"2", "9", "10"}
    assert limited.corpus is dataset.corpus
    assert dataset.limit(10).queries.keys() == dataset.queries.keys()


def test_limit_orders_other_ids_lexicographically() -> None:
    dataset = RetrievalDataset(
        name="mixed",
        corpus={},
        queries={"b": "B", "q10": "Q10", "a": "A", "q9": "Q9"},
        qrels={"b": {"d": 1}, "q10": {"d": 1}, "a": {"d": 1}, "q9": {"d": 1}},
    )

    assert list(dataset.limit(3).queries) == ["a", "b", "q10"]
    for below_one in (0, -1):
        with pytest.raises(DatasetError, match=f"the query limit must be at least 1, got {below_one}"):
            dataset.limit(below_one)


def test_load_llamaindex_qa(tmp_path: Path) -> None:
    dataset = load_llamaindex_qa(_write_qa(tmp_path / "qa_set.json"))

    assert dataset.name == "qa_set"
    assert {doc_id: doc.text for doc_id, doc in dataset.corpus.items()} == {
        "n1": "Cats purr.",
        "n2": "Dogs bark.",
    }
    # q2 has no relevant docs -> dropped; relevance is binary
    assert dataset.queries == {"q1": "what purrs"}
    assert dataset.qrels == {"q1": {"n1": 1}}


def test_load_llamaindex_qa_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"queries": {}, "corpus": {}}))

    with pytest.raises(DatasetError, match="relevant_docs"):
        load_llamaindex_qa(path)


def test_load_llamaindex_qa_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n"queries": \n')

    with pytest.raises(DatasetError, match=r"bad\.json:\d+: invalid JSON"):
        load_llamaindex_qa(path)


def test_load_dataset_dispatches_on_layout(tmp_path: Path) -> None:
    root = _write_beir(tmp_path / "tiny")
    qa = _write_qa(tmp_path / "qa_set.json")

    assert load_dataset(root).name == "tiny"
    assert load_dataset(root / "corpus.jsonl").name == "tiny"
    assert load_dataset(qa).name == "qa_set"


@pytest.mark.parametrize("name", ["empty_dir", "notes.txt", "nowhere"])
def test_load_dataset_rejects_unknown_layouts(tmp_path: Path, name: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("hi")

    with pytest.raises(DatasetError, match="BEIR directory"):
        load_dataset(tmp_path / name)


def test_real_scifact_counts() -> None:
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not staged at {SCIFACT}")

    dataset = load_dataset(SCIFACT)

    assert dataset.name == "scifact"
    assert len(dataset.corpus) == 5183
    assert len(dataset.queries) == 300
    assert sum(len(judged) for judged in dataset.qrels.values()) == 339


def test_a_duplicate_corpus_id_is_refused(tmp_path: Path) -> None:
    corpus = [*CORPUS, {"_id": "d2", "text": "Another dog."}]
    with pytest.raises(DatasetError, match="the _id 'd2' appears twice"):
        load_beir(_write_beir(tmp_path / "tiny", corpus=corpus))


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "why"),
    [
        (CORPUS, QUERIES, "query-id\tcorpus-id\tscore\n1\tghost\t1\n2\tphantom\t2\n", "2 documents missing"),
        ([], QUERIES, QRELS, "the corpus is empty"),
        (CORPUS, [], QRELS, "no judged query has text"),
        (CORPUS, QUERIES, "query-id\tcorpus-id\tscore\n1\td1\t0\n", "no query has a judgment with a grade above 0"),
        (CORPUS, QUERIES, "query-id\tcorpus-id\tscore\n", "the qrels judge no query"),
    ],
)
def test_a_dataset_with_no_evaluable_query_says_why(tmp_path: Path, corpus, queries, qrels, why) -> None:
    with pytest.raises(DatasetError, match=f"tiny: no query can be evaluated: .*{why}"):
        load_beir(_write_beir(tmp_path / "tiny", corpus=corpus, queries=queries, qrels=qrels))


# --- what `twostage ingest PATH` reads (ingest/sources.py): a BEIR corpus, else a folder's files -------------------


@pytest.mark.parametrize("given", ["folder", "corpus.jsonl"])
def test_ingest_reads_a_beir_corpus_from_its_folder_or_its_file(tmp_path, given):
    root = _write_beir(tmp_path / "beir")
    read = load_documents(root if given == "folder" else root / "corpus.jsonl")
    assert [document.id_ for document in read.documents] == ["d1", "d2", "d3"]
    assert read.documents[0].text == "Cats\nCats purr." and read.source is None and read.skipped == {}


def test_ingest_reads_any_other_folder_as_files_and_keeps_the_first_limit(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in {"a.txt": "first note", "b.md": "# second", "c.txt": "third", "pic.png": ""}.items():
        (folder / name).write_text(text)
    (folder / "blob.bin").write_bytes(bytes(range(256)))
    read = load_documents(folder, limit=2, source="kb")
    assert [document.id_ for document in read.documents] == ["kb/a.txt", "kb/b.md"]
    assert read.source == "kb" and set(read.skipped) == {"kb/blob.bin", "kb/pic.png"}


def test_ingest_refuses_a_limit_below_one_and_a_folder_without_text(tmp_path):
    with pytest.raises(ConfigurationError, match="--limit must be at least 1"):
        load_documents(tmp_path, limit=0)
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    with pytest.raises(DocumentError, match="no documents to ingest .* 1 files, none of them text"):
        load_documents(tmp_path)
