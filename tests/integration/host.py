"""One process of a host in the shared-state tests: ``python host.py SETTINGS_JSON ACTION [ARGS...]``.

The working directory is the host (a server's lexical index lives under ``./.twostage``). Documents and the
embedding are the cheap deterministic ones of the tests (no model is loaded), so a process starts in about a second.
Prints one JSON line with what the action saw.

Actions:
    ingest VERSION I...     ingest ``article(i, VERSION)`` for each i
    delete ID...            delete documents
    query TEXT              lexical ids of a fresh process's first query
    watch TEXT SECONDS      the number of lexical hits of TEXT, queried in a loop for SECONDS (a long-lived retriever;
                            prints "watching" once the first query has answered)
    hold SECONDS            hold the live lexical index's writer lock (print "held" once taken)
    reconcile               a full reconcile (``verify --repair``)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_index.core import Document  # noqa: E402
from support import HashEmbedding  # noqa: E402

from llama_index_twostage.nodes import stage_info  # noqa: E402
from llama_index_twostage.pipeline import TwoStagePipeline  # noqa: E402
from llama_index_twostage.settings import RetrieverSettings  # noqa: E402

TOPICS = ["vitamin", "fracture", "insulin", "tumour", "antibody", "neuron", "statin", "malaria"]


def article(i: int, version: int = 0) -> Document:
    """Three chunks of a few words; ``word<version>`` marks each version's text (the chunk count stays 3)."""
    topic = TOPICS[i % len(TOPICS)]
    paragraphs = [
        f"Report {i} studies {topic} in cohort {i}; marker code{i} and word{version} appear here, part {part}."
        for part in range(3)
    ]
    return Document(id_=f"doc-{i}", text="\n\n".join(paragraphs))


def lexical_ids(pipeline: TwoStagePipeline, text: str) -> list[str]:
    nodes = pipeline.retriever(stage1_mode="lexical").retrieve(text)
    return [scored.node.node_id for scored in nodes if "lexical_rank" in stage_info(scored)]


def main(settings_json: str, action: str, *args: str) -> dict:
    settings = RetrieverSettings.model_validate_json(settings_json)
    with TwoStagePipeline(settings, embed_model=HashEmbedding()) as pipeline:
        if action == "ingest":
            report = pipeline.ingest([article(int(i), int(args[0])) for i in args[1:]])
            return report.to_dict()
        if action == "delete":
            return {"chunks": pipeline.delete(list(args)).chunks}
        if action == "query":
            return {"ids": lexical_ids(pipeline, args[0])}
        if action == "watch":
            retriever = pipeline.retriever(stage1_mode="lexical")
            seen, deadline = [], time.monotonic() + float(args[1])
            while not seen or time.monotonic() < deadline:
                nodes = retriever.retrieve(args[0])
                seen.append(sum("lexical_rank" in stage_info(scored) for scored in nodes))
                if len(seen) == 1:
                    print("watching", flush=True)  # the first answer is in: the caller may start writing
            return {"hits": seen}
        if action == "hold":
            live = pipeline.lexical._writing()  # the live generation's tantivy index  # noqa: SLF001
            writer = live.index.writer(15_000_000, 1)
            print("held", flush=True)
            time.sleep(float(args[0]))
            writer.rollback()
            writer.wait_merging_threads()
            return {"held": True}
        if action == "reconcile":
            return {"ok": pipeline.verify(repair_lexical=True).ok}
    raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])), flush=True)
