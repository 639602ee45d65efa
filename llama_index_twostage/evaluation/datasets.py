"""Loaders for retrieval benchmarks: BEIR folders and LlamaIndex QA JSON.

Both formats are normalised to :class:`RetrievalDataset` so the evaluation code
never cares where the data came from.  Files are streamed line by line so a
few-thousand-document corpus loads in well under a second.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from llama_index.core.schema import Document

from llama_index_twostage.ingest.beir import (
    BEIR_LAYOUT,
    DatasetError,
    iter_jsonl_records,
    load_beir_corpus,
    required_field,
)

logger = logging.getLogger(__name__)

ACCEPTED_LAYOUTS = (
    f"a BEIR directory ({BEIR_LAYOUT}), the path of a BEIR corpus.jsonl, "
    "or a LlamaIndex EmbeddingQAFinetuneDataset .json file"
)
_QA_KEYS = ("queries", "corpus", "relevant_docs")


@dataclass(frozen=True)
class RetrievalDataset:
    """Corpus, judged queries and graded qrels of one retrieval benchmark.

    ``queries`` holds only queries with at least one relevant (grade > 0)
    judgment, so every query counts in the metrics.
    """

    name: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def limit(self, n: int) -> RetrievalDataset:
        """Keep the first n judged queries in id order (numeric when every id is
        a number, so "10" follows "9") for quick, reproducible subset runs.
        The full corpus is kept so the retrieval task stays as hard."""
        if n < 1:
            raise DatasetError(f"the query limit must be at least 1, got {n}: leave it out to evaluate every query")
        judged = [
            qid
            for qid, judgments in self.qrels.items()
            if qid in self.queries and any(grade > 0 for grade in judgments.values())
        ]
        keep = _sorted_ids(judged)[:n]
        return replace(
            self,
            queries={qid: self.queries[qid] for qid in keep},
            qrels={qid: self.qrels[qid] for qid in keep},
        )


def _sorted_ids(ids: list[str]) -> list[str]:
    """Sort ids numerically when all are digit strings, else lexicographically."""
    if all(qid.isdigit() for qid in ids):
        return sorted(ids, key=int)
    return sorted(ids)


def load_dataset(path: str | Path, split: str = "test", *, title_as_metadata: bool = False) -> RetrievalDataset:
    """Load a dataset, picking the format from the path's shape.

    Accepts a BEIR directory, a BEIR ``corpus.jsonl`` (its parent is loaded) or
    a LlamaIndex QA ``.json`` file; ``split`` and ``title_as_metadata`` only apply to BEIR.
    """
    path = Path(path)
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        return load_beir(path, split, title_as_metadata=title_as_metadata)
    if path.is_file() and path.name == "corpus.jsonl":
        return load_beir(path.parent, split, title_as_metadata=title_as_metadata)
    if path.is_file() and path.suffix == ".json":
        return load_llamaindex_qa(path)
    raise DatasetError(f"Cannot load dataset from {path}: expected {ACCEPTED_LAYOUTS}")


def load_beir(path: str | Path, split: str = "test", *, title_as_metadata: bool = False) -> RetrievalDataset:
    """Load a BEIR dataset directory (``name`` = directory name, plus ``-title-metadata`` with titles as metadata).

    Only queries judged relevant to at least one doc in ``qrels/<split>.tsv``
    are kept, since BEIR's queries.jsonl may mix splits (SciFact's does).
    With ``title_as_metadata`` the title is a metadata field, not part of the text (see :func:`load_beir_corpus`).
    """
    root = Path(path)
    corpus_path = _require_file(root / "corpus.jsonl")
    queries_path = _require_file(root / "queries.jsonl")
    qrels_path = _require_file(root / "qrels" / f"{split}.tsv")

    qrels = _read_qrels_tsv(qrels_path)
    corpus = _unique_ids(load_beir_corpus(corpus_path, title_as_metadata=title_as_metadata), corpus_path)
    queries = {
        qid: str(required_field(record, "text", queries_path, lineno))
        for lineno, qid, record in iter_jsonl_records(queries_path)
        if qid in qrels
    }
    return _assemble(f"{root.name}-title-metadata" if title_as_metadata else root.name, corpus, queries, qrels)


def load_llamaindex_qa(path: str | Path) -> RetrievalDataset:
    """Load a LlamaIndex ``EmbeddingQAFinetuneDataset`` JSON file
    (``name`` = file stem); every listed relevant doc gets grade 1.

    Parsed directly because llama-index-core 0.14 no longer ships the class.
    """
    file = _require_file(Path(path))
    with file.open(encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    invalid = [key for key in _QA_KEYS if not isinstance(data, dict) or not isinstance(data.get(key), dict)]
    if invalid:
        raise DatasetError(
            f"{file}: not an EmbeddingQAFinetuneDataset JSON, missing or non-object "
            f"keys {invalid}; expected an object with {list(_QA_KEYS)}"
        )
    corpus = {str(doc_id): Document(id_=str(doc_id), text=text) for doc_id, text in data["corpus"].items()}
    queries = {str(qid): text for qid, text in data["queries"].items()}
    qrels = {str(qid): {str(doc_id): 1 for doc_id in doc_ids} for qid, doc_ids in data["relevant_docs"].items()}
    return _assemble(file.stem, corpus, queries, qrels)


def _unique_ids(documents: list[Document], path: Path) -> dict[str, Document]:
    """Documents by id; an id twice is refused (a dict would silently keep the last copy), as ingestion does."""
    corpus: dict[str, Document] = {}
    for document in documents:
        if corpus.setdefault(document.id_, document) is not document:
            raise DatasetError(f"{path}: the _id {document.id_!r} appears twice: give each document a unique _id")
    return corpus


def _require_file(path: Path) -> Path:
    """Fail early with the expected layout rather than a bare FileNotFoundError."""
    if not path.is_file():
        raise DatasetError(
            f"Missing dataset file {path}; expected a BEIR layout ({BEIR_LAYOUT}) "
            "or a LlamaIndex EmbeddingQAFinetuneDataset .json file"
        )
    return path


def _read_qrels_tsv(path: Path) -> dict[str, dict[str, int]]:
    """Parse ``query-id<TAB>corpus-id<TAB>score`` rows after the header line."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        next(handle, None)  # header: query-id, corpus-id, score
        for lineno, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            try:
                qid, doc_id, score = parts
                grade = int(score)
            except ValueError as exc:
                raise DatasetError(
                    f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>integer score', got {line.rstrip()!r}"
                ) from exc
            qrels.setdefault(qid, {})[doc_id] = grade
    return qrels


def _assemble(
    name: str,
    corpus: dict[str, Document],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
) -> RetrievalDataset:
    """Drop judgments on docs absent from the corpus (real datasets have such
    gaps, so warn instead of failing) and keep only queries with text and at
    least one relevant doc, so every query can be scored."""
    missing_docs = sorted({d for judged in qrels.values() for d in judged if d not in corpus})
    kept_qrels: dict[str, dict[str, int]] = {}
    for qid, judged in qrels.items():
        in_corpus = {doc_id: grade for doc_id, grade in judged.items() if doc_id in corpus}
        if qid in queries and any(grade > 0 for grade in in_corpus.values()):
            kept_qrels[qid] = in_corpus
    if not kept_qrels:
        raise DatasetError(f"{name}: no query can be evaluated: {_why_none(corpus, queries, qrels, missing_docs)}")
    if missing_docs:
        logger.warning(
            "%s: dropping judgments for %d doc ids missing from the corpus, e.g. %s",
            name,
            len(missing_docs),
            missing_docs[:5],
        )
    missing_queries = sorted(qid for qid in qrels if qid not in queries)
    if missing_queries:
        logger.warning(
            "%s: dropping %d judged query ids without query text, e.g. %s",
            name,
            len(missing_queries),
            missing_queries[:5],
        )
    kept_queries = {qid: queries[qid] for qid in kept_qrels}
    return RetrievalDataset(name=name, corpus=corpus, queries=kept_queries, qrels=kept_qrels)


def _why_none(
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    missing_docs: list[str],
) -> str:
    """What left a dataset without an evaluable query, in the user's terms."""
    if not corpus:
        return "the corpus is empty"
    if not qrels:
        return "the qrels judge no query"
    if not queries:
        return f"no judged query has text ({len(qrels)} judged query ids, none in the queries file)"
    if missing_docs:
        return (
            f"the judgments point to {len(missing_docs)} documents missing from the corpus (e.g. {missing_docs[:3]}): "
            "check that qrels and corpus come from the same dataset"
        )
    return "no query has a judgment with a grade above 0"
