"""``evaluate`` and ``twostage eval`` on the real models and SciFact.

One test embeds the full SciFact corpus once (about 5 minutes on 2 cores) and checks stage 1 against the reference
figure; the CLI test uses a small BEIR subset written to a temporary folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from support import RecordingPairs, RecordingScorer
from typer.testing import CliRunner

from llama_index_twostage.cli import app
from llama_index_twostage.evaluation import compare_stage1, evaluate, load_beir
from llama_index_twostage.evaluation.runner import evaluation_settings
from llama_index_twostage.pipeline import TwoStagePipeline
from llama_index_twostage.settings import RetrieverSettings
from llama_index_twostage.stage2 import CrossEncoderRerank, CrossEncoderScorer

pytestmark = pytest.mark.integration

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SCIFACT = SHARED / "data" / "scifact"
EMBED = SHARED / "models" / "all-MiniLM-L6-v2"
RERANK = SHARED / "models" / "twostage-test-reranker"
REFERENCE_NDCG = 0.6451  # all-MiniLM-L6-v2, exact search, SciFact test (data README)


def _settings(persist_dir: Path, **overrides: object) -> RetrieverSettings:
    fields = {
        "embed_model": str(EMBED),
        "rerank_model": str(RERANK),
        "persist_dir": persist_dir,
        "chroma_mode": "embedded",
        "top_k": 5,
        "recall_k": 10,
        "max_length": 256,
        "show_progress": False,
    }
    return RetrieverSettings(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.mark.full_suite
@pytest.mark.timeout(1800)  # embeds 5,183 docs: ~5 min on 2 idle cores, past the 600 s default under load
def test_full_scifact_stage1_matches_reference_and_a_second_run_embeds_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    dataset = load_beir(SCIFACT)
    settings = _settings(tmp_path_factory.mktemp("scifact-store"), stage1_mode="dense")
    # Every pair scored alike: the two-stage ranking must be stage 1's (ties keep stage-1 order).
    constant = CrossEncoderRerank(RecordingScorer(lambda text: 0.0), top_k=5)
    comparison = compare_stage1(dataset, settings, ["dense", "hybrid"], sweep=[10, 50, 100], reranker=constant)
    first, hybrid = comparison.reports["dense"], comparison.reports["hybrid"]
    assert len(first.traces) == 300
    assert first.ingest["added"] == len(dataset.corpus) == 5183
    assert first.stage1["ndcg@10"] == pytest.approx(REFERENCE_NDCG, abs=0.002)
    assert first.two_stage["ndcg@10"] == pytest.approx(first.stage1["ndcg@10"])
    # The vocabulary gap on SciFact (issue 11's bm25s measurement: dense 0.645, fused 0.718): BM25 fused with the
    # bi-encoder finds more, so the same recall ceiling needs fewer candidates.
    assert hybrid.stage1["ndcg@10"] > first.stage1["ndcg@10"] + 0.03
    assert [p.stage1_recall for p in hybrid.sweep] > [p.stage1_recall for p in first.sweep]
    assert comparison.recall_k_matching("dense") <= 100
    assert comparison.recall_k_matching("hybrid") < 70
    assert comparison.reference_recall == pytest.approx(first.sweep[-1].stage1_recall)

    counting = RecordingPairs(CrossEncoderScorer.load(str(RERANK), max_length=256))
    second = evaluate(dataset, settings, sweep=[5, 10], limit=5, reranker=CrossEncoderRerank(counting, top_k=5))
    assert (second.ingest["added"], second.ingest["already_stored"]) == (0, 5183)
    assert len(counting.pairs) == sum(len(trace.candidates) for trace in second.traces) == 50
    assert max(Counter(counting.pairs).values()) == 1  # no pair scored twice across the sweep
    assert [point.pairs_per_query for point in second.sweep] == [5.0, 10.0]
    assert 0 < second.sweep[0].stage2_p50_ms < second.sweep[1].stage2_p50_ms


def _write_scifact_subset(root: Path, queries: int = 5, extra_docs: int = 120) -> Path:
    """A BEIR folder: the first judged test queries, their relevant docs and the corpus's first documents."""
    dataset = load_beir(SCIFACT).limit(queries)
    relevant = {doc_id for judged in dataset.qrels.values() for doc_id in judged}
    corpus_lines = (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    kept = [line for i, line in enumerate(corpus_lines) if i < extra_docs or json.loads(line)["_id"] in relevant]
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": qid, "text": text}) + "\n" for qid, text in dataset.queries.items()),
        encoding="utf-8",
    )
    rows = [f"{qid}\t{doc_id}\t{grade}\n" for qid, judged in dataset.qrels.items() for doc_id, grade in judged.items()]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows), encoding="utf-8")
    return root


def browser_dom(page: Path, fragment: str = "") -> BeautifulSoup:
    """The page as a real headless Chromium leaves it once loaded and its script has run (Debian's chromium, which
    scripts/setup.sh installs)."""
    browser = shutil.which("chromium")
    assert browser, "chromium is missing: run scripts/setup.sh (it installs Debian's chromium)"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom"]
    done = subprocess.run([*command, page.as_uri() + fragment], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return BeautifulSoup(done.stdout, "html.parser")


def check_html_report(page: Path, report: dict) -> None:
    """The page renders on its own: both figures decoded from the page itself, the stage metrics and the sweep with
    its knee, and the per-query table, sorted by the browser when the address asks for it."""
    assert 'src="http' not in page.read_text() and "<link" not in page.read_text()  # nothing fetched from elsewhere
    dom = browser_dom(page, "#sort=-stage1_ms")
    assert dom.body["data-figures-shown"] == "2"
    assert all(img["src"].startswith("data:image/png;base64,") for img in dom.find_all("img"))
    assert report["dataset"] in dom.h1.get_text()
    stage_rows = {
        row.td.get_text(): [td.get_text() for td in row.find_all("td")] for row in dom.table.tbody.find_all("tr")
    }
    assert float(stage_rows["ndcg@10"][1]) == pytest.approx(report["stage1"]["ndcg@10"], abs=1e-4)
    assert float(stage_rows["ndcg@10"][2]) == pytest.approx(report["two_stage"]["ndcg@10"], abs=1e-4)
    (knee,) = dom.select("tr.knee")
    assert knee.td.get_text() == f"{report['recommended_recall_k']} (recommended)"
    table = dom.find(id="per-query")
    rows = table.tbody.find_all("tr")
    assert len(rows) == report["queries"]
    stage1_ms = [float(row.find_all("td")[4]["data-value"]) for row in rows]
    assert stage1_ms == sorted(stage1_ms, reverse=True)  # sorted by the page's script, in the browser
    assert table.find("th", attrs={"data-key": "stage1_ms"})["aria-sort"] == "descending"
    assert all("\u2192" in row.find_all("td")[-1].get_text() for row in rows)


@pytest.fixture(scope="module")
def mini_beir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small BEIR folder and the store its evaluations share: the first `twostage eval` embeds it, the next finds
    it embedded (what a second eval on the same data does)."""
    return _write_scifact_subset(tmp_path_factory.mktemp("data") / "scifact-mini"), tmp_path_factory.mktemp("store")


def test_cli_eval_writes_the_report_files(tmp_path_factory: pytest.TempPathFactory, mini_beir) -> None:
    data, store = mini_beir
    out = tmp_path_factory.mktemp("report")
    args = ["eval", str(data), "--out", str(out), "--limit", "5", "--sweep", "5,10", "--top-k", "5"]
    args += ["--embed-model", str(EMBED), "--rerank-model", str(RERANK), "--persist-dir", str(store)]
    result = CliRunner().invoke(app, args, env={"TWOSTAGE_MAX_LENGTH": "256", "TWOSTAGE_SHOW_PROGRESS": "false"})
    assert result.exit_code == 0, result.output
    assert "recommended recall_k" in result.output
    assert sorted(path.name for path in out.iterdir()) == [
        "per_query.csv", "rank_movement.png", "report.html", "report.json", "sweep.png",
    ]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["queries"] == 5 and report["dataset"] == "scifact-mini"
    check_html_report(out / "report.html", report)
    assert {"ndcg@10", "mrr@10", "recall@5", "recall@10", "p50_ms", "p95_ms"} <= set(report["stage1"])
    assert "pairs_per_query" in report["two_stage"]
    assert [point["recall_k"] for point in report["sweep"]] == [5, 10]
    assert report["recommended_recall_k"] in (5, 10) and report["knee_tolerance"] == 0.005
    assert sum(report["diagnosis"]["queries"].values()) == 5
    assert report["settings"]["collection"] == "eval-scifact-mini-all-MiniLM-L6-v2"


def test_cli_eval_compares_stage1_modes(tmp_path_factory: pytest.TempPathFactory, mini_beir) -> None:
    data, store = mini_beir
    out = tmp_path_factory.mktemp("compare")
    args = ["eval", str(data), "--out", str(out), "--limit", "5", "--sweep", "5,10", "--top-k", "5"]
    args += ["--embed-model", str(EMBED), "--rerank-model", str(RERANK), "--compare-stage1", "dense,hybrid"]
    args += ["--persist-dir", str(store)]
    result = CliRunner().invoke(app, args, env={"TWOSTAGE_MAX_LENGTH": "256", "TWOSTAGE_SHOW_PROGRESS": "false"})
    assert result.exit_code == 0, result.output
    assert "stage-1 modes compared (reference dense)" in result.output
    assert sorted(path.name for path in out.iterdir()) == ["comparison.json", "dense", "hybrid", "stage1_recall.png"]
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["modes"]) == {"dense", "hybrid"} and comparison["depth"] == 10
    assert comparison["modes"]["dense"]["recall_k_for_reference_recall"] <= 10
    for mode in ("dense", "hybrid"):
        report = json.loads((out / mode / "report.json").read_text())
        assert report["stage1_mode"] == mode and report["queries"] == 5
    hybrid_rows = (out / "hybrid" / "per_query.csv").read_text()
    assert "(both)" in hybrid_rows or "(lexical)" in hybrid_rows  # which side found each relevant document
    assert "(lexical)" not in (out / "dense" / "per_query.csv").read_text()
    refused = CliRunner().invoke(app, [*args, "--compare-stage1", "dense,sparse"])  # the last flag wins
    assert refused.exit_code == 2 and "unknown stage-1 modes ['sparse']" in refused.output


def test_evaluation_with_the_cascade_returns_what_the_pipeline_returns(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Query by query, the evaluated ranking is the pipeline's own: cascade, threshold and top_k applied."""
    dataset = load_beir(_write_scifact_subset(tmp_path_factory.mktemp("data") / "scifact-cascade", extra_docs=40))
    settings = _settings(tmp_path_factory.mktemp("cascade-store"), cascade_k=6, cascade_max_length=64)
    report = evaluate(dataset, settings, sweep=[10])
    with TwoStagePipeline(evaluation_settings(dataset, settings)) as pipeline:
        retriever = pipeline.two_stage_retriever()
        for trace in report.traces:
            returned = [scored.node.ref_doc_id for scored in retriever.retrieve(dataset.queries[trace.query_id])]
            assert trace.two_stage_ranking(10)[:5] == returned
            assert len(trace.two_stage_ranking(10)) == 6  # the cascade's shortlist, not all 10 candidates
    assert report.two_stage["pairs_per_query"] == 6.0
