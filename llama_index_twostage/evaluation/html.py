"""``report.html``: the evaluation as one self-contained page to open, share or attach to a pull request.

Figures are embedded (base64 PNGs), styles and the small sorting script are inline: no file beside it and no
network. It shows what the terminal table shows, and more: both stages side by side, the sweep with its knee, the
diagnosis, and every query with where each of its relevant documents went, sortable by any column (click a heading;
``#sort=<column>`` or ``#sort=-<column>`` in the address opens it sorted).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from llama_index_twostage.evaluation.diagnosis import DocDiagnosis, summarize
from llama_index_twostage.evaluation.report import NDCG, EvaluationReport

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #1d2330; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.sub { color: #5a6272; margin-top: 0; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #e2e5ea; text-align: right; }
th:first-child, td:first-child, td.text, #per-query th:last-child, td:last-child { text-align: left; }
th { background: #f3f5f8; }
#per-query th { cursor: pointer; user-select: none; }
#per-query th[aria-sort=ascending]::after { content: " \\25B2"; }
#per-query th[aria-sort=descending]::after { content: " \\25BC"; }
tr.knee td { background: #e8f4ea; font-weight: 600; }
.hit { color: #1f7a35; } .reranker_miss { color: #a86400; } .lost_before_reranking { color: #b3261e; }
.up { color: #1f7a35; } .down { color: #b3261e; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e2e5ea; }
figcaption { color: #5a6272; font-size: .9rem; }
"""

_SCRIPT = """
(function () {
  const table = document.getElementById("per-query");
  const body = table.tBodies[0];
  const headers = Array.from(table.tHead.rows[0].cells);
  function sortBy(key, descending) {
    const index = headers.findIndex(th => th.dataset.key === key);
    if (index < 0) return;
    const numeric = headers[index].dataset.type === "number";
    const value = row => row.cells[index].dataset.value;
    const rows = Array.from(body.rows).sort((a, b) => {
      const order = numeric ? Number(value(a)) - Number(value(b)) : value(a).localeCompare(value(b));
      return descending ? -order : order;
    });
    rows.forEach(row => body.appendChild(row));
    headers.forEach(th => th.removeAttribute("aria-sort"));
    headers[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  headers.forEach(th => th.addEventListener("click", () => {
    sortBy(th.dataset.key, th.getAttribute("aria-sort") === "ascending");
  }));
  const wanted = /^#sort=(-?)(.+)$/.exec(decodeURIComponent(location.hash));
  if (wanted) sortBy(wanted[2], wanted[1] === "-");
  window.addEventListener("load", () => {
    const shown = Array.from(document.images).filter(img => img.complete && img.naturalWidth > 0);
    document.body.dataset.figuresShown = String(shown.length);
  });
})();
"""


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def _table(headings: Iterable[str], rows: Iterable[Iterable[str]], marked: int | None = None) -> str:
    """A table of already escaped cells; the row at index ``marked`` is highlighted."""
    head = "".join(f"<th>{escape(heading)}</th>" for heading in headings)
    body = "".join(
        ("<tr class=knee>" if index == marked else "<tr>") + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
        for index, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _change(before: float, after: float) -> str:
    delta = after - before
    kind = "up" if delta > 0 else "down" if delta < 0 else ""
    return f'<span class="{kind}">{delta:+.4f}</span>'


def _stages(report: EvaluationReport) -> str:
    rows = [
        [
            escape(key),
            _number(report.stage1[key]),
            _number(report.two_stage[key]),
            _change(report.stage1[key], report.two_stage[key]),
        ]
        for key in report.quality_keys
    ]
    rows += [
        [f"{key} (ms)", _number(report.stage1[key], 1), _number(report.two_stage[key], 1), ""]
        for key in ("p50_ms", "p95_ms")
    ]
    table = _table(["metric", "stage 1", "two-stage", "change"], rows)
    pairs = report.two_stage["pairs_per_query"]
    total = report.two_stage["total_p50_ms"]
    note = (
        f"Stage-1 milliseconds are embedding and search; two-stage milliseconds are reranking alone "
        f"({pairs:.1f} pairs per query); a query costs {total:.1f} ms at the median, both stages together. "
        f"recall@{report.recall_k} is the ceiling: the share of relevant documents stage 1 hands to the reranker."
    )
    return f"<h2>What each stage contributes</h2>{table}<p class=sub>{escape(note)}</p>"


def _sweep(report: EvaluationReport) -> str:
    rows = [
        [
            f"{point.recall_k}{' (recommended)' if point.recall_k == report.recommended_recall_k else ''}",
            _number(point.stage1_recall),
            _number(point.ndcg),
            _number(point.mrr),
            f"{point.pairs_per_query:.1f}",
            _number(point.stage2_p50_ms, 1),
            _number(point.stage2_p95_ms, 1),
        ]
        for point in report.sweep
    ]
    knee = [point.recall_k for point in report.sweep].index(report.recommended_recall_k)
    head = ["recall_k", "stage-1 recall", f"two-stage {NDCG}", "two-stage mrr@10", "pairs/query"]
    table = _table([*head, "stage-2 p50 ms", "stage-2 p95 ms"], rows, marked=knee)
    knee_note = (
        f"Recommended recall_k: {report.recommended_recall_k}, the smallest swept value whose two-stage {NDCG} is "
        f"within {report.knee_tolerance:g} of the best: beyond it the reranker reads more pairs for no measurable gain."
    )
    return f"<h2>The sweep and its knee</h2>{table}<p class=sub>{escape(knee_note)}</p>"


def _diagnosis(report: EvaluationReport) -> str:
    summary = summarize(report.diagnoses)
    rows = [
        [
            f'<span class="{escape(outcome)}">{escape(outcome)}</span>',
            str(count),
            str(summary["relevant_docs"][outcome]),
        ]
        for outcome, count in summary["queries"].items()
    ]
    explanation = (
        "hit: a relevant document in the final top_k; reranker_miss: delivered to the reranker but ranked below "
        "top_k (a stage-2 problem); lost_before_reranking: beyond recall_k, out of any reranker's reach (a stage-1 "
        "problem: raise recall_k or use hybrid stage 1)."
    )
    return (
        f"<h2>Diagnosis at recall_k={report.recall_k}</h2>"
        + _table(["outcome", "queries", "relevant documents"], rows)
        + f"<p class=sub>{escape(explanation)}</p>"
    )


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _movement(doc: DocDiagnosis) -> str:
    rank = lambda value: "none" if value is None else str(value)  # noqa: E731
    side = f" ({doc.found_by})" if doc.found_by else ""
    text = f"{doc.doc_id}: {rank(doc.stage1_rank)} \u2192 {rank(doc.final_rank)}{side}"
    return f'<span class="{escape(doc.outcome)}">{escape(text)}</span>'


_COLUMNS: list[tuple[str, str, str]] = [  # key, heading, type
    ("query", "query", "text"),
    ("outcome", "outcome", "text"),
    ("stage1_ndcg", f"stage-1 {NDCG}", "number"),
    ("two_stage_ndcg", f"two-stage {NDCG}", "number"),
    ("stage1_ms", "stage-1 ms", "number"),
    ("stage2_ms", "stage-2 ms", "number"),
    ("pairs", "pairs", "number"),
    ("best_stage1_rank", "relevant documents: stage-1 rank \u2192 final rank (side)", "number"),
]
_ALIGN_LEFT = " class=text"


def _per_query(report: EvaluationReport) -> str:
    head = "".join(
        f'<th data-key="{key}" data-type="{kind}" title="sort">{escape(heading)}</th>'
        for key, heading, kind in _COLUMNS
    )
    rows = []
    for trace, diagnosis in zip(report.traces, report.diagnoses):
        metrics = report.per_query[trace.query_id]
        ranks = [doc.stage1_rank for doc in diagnosis.docs if doc.stage1_rank is not None]
        values: Mapping[str, Any] = {
            "query": trace.query_id,
            "outcome": diagnosis.outcome,
            "stage1_ndcg": metrics[f"stage1_{NDCG}"],
            "two_stage_ndcg": metrics[f"two_stage_{NDCG}"],
            "stage1_ms": trace.stage1_ms,
            "stage2_ms": trace.stage2_ms[report.recall_k],
            "pairs": trace.pairs(report.recall_k),
            "best_stage1_rank": min(ranks) if ranks else 10**9,
        }
        shown = {
            "query": escape(trace.query_id),
            "outcome": f'<span class="{escape(diagnosis.outcome)}">{escape(diagnosis.outcome)}</span>',
            "stage1_ndcg": _number(values["stage1_ndcg"]),
            "two_stage_ndcg": _number(values["two_stage_ndcg"]),
            "stage1_ms": _number(values["stage1_ms"], 1),
            "stage2_ms": _number(values["stage2_ms"], 1),
            "pairs": str(values["pairs"]),
            "best_stage1_rank": "<br>".join(_movement(doc) for doc in diagnosis.docs),
        }
        cells = "".join(
            f'<td data-value="{escape(str(values[key]))}"{_ALIGN_LEFT if kind == "text" else ""}>{shown[key]}</td>'
            for key, _, kind in _COLUMNS
        )
        rows.append(f"<tr>{cells}</tr>")
    return (
        "<h2>Every query</h2><p class=sub>Click a heading to sort. The last column sorts by the best stage-1 rank of "
        "a relevant document.</p>"
        f'<table id="per-query"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def write_html(report: EvaluationReport, figures: Mapping[str, Path], path: Path) -> Path:
    """Write the page to ``path``; ``figures`` maps a caption to a PNG that is embedded."""
    title = f"{report.dataset}: two-stage evaluation"
    subtitle = (
        f"{len(report.traces)} queries, top_k={report.top_k}, recall_k={report.recall_k}, stage 1 "
        f"{report.stage1_mode}; model {report.settings.get('rerank_model', '?')} over "
        f"{report.settings.get('embed_model', '?')}"
    )
    sections = [
        _stages(report),
        _sweep(report),
        "".join(_figure(png, caption) for caption, png in figures.items()),
        _diagnosis(report),
        _per_query(report),
    ]
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1><p class=sub>{escape(subtitle)}</p>"
        + "".join(sections)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path
