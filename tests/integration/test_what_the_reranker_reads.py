"""What the cross-encoder reads, on the real test reranker: metadata and instruction templates, long documents read
as windows, and heads with several outputs.

No two-output cross-encoder can be downloaded here, so ``multi_output_reranker`` builds one from the shared test
reranker's weights: its single logit ``w.h + b`` becomes two logits ``(-(w.h + b) / 2, (w.h + b) / 2)``, whose
difference (the log-odds of class 1) is the original logit. A faithful reading of the head must therefore give the
original model's scores.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from safetensors.torch import load_file, save_file
from sentence_transformers import CrossEncoder
from support import RERANK_DIR, RecordingPairs, RecordingScorer, scifact_subset

from llama_index_twostage import ModelOutputError, PairTemplate
from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.evaluation import evaluate
from llama_index_twostage.stage2 import CrossEncoderRerank, CrossEncoderScorer, ScoreCache

pytestmark = pytest.mark.integration

QUERY = "Does vitamin D supplementation reduce fracture risk in older adults?"


@pytest.fixture(scope="module")
def scorer(rerank_model_dir: str) -> CrossEncoderScorer:
    return CrossEncoderScorer.load(rerank_model_dir, max_length=128)


@pytest.fixture(scope="module")
def reference(rerank_model_dir: str) -> CrossEncoder:
    return CrossEncoder(rerank_model_dir, max_length=128, device="cpu")


@pytest.fixture(scope="module")
def multi_output_reranker(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """A folder holding the test reranker with an ``outputs``-logit head (see the module docstring)."""

    def build(outputs: int) -> Path:
        folder = tmp_path_factory.mktemp(f"reranker-{outputs}-outputs")
        shutil.copytree(RERANK_DIR, folder, dirs_exist_ok=True)
        weights = load_file(str(RERANK_DIR / "model.safetensors"))
        weight, bias = weights["classifier.weight"], weights["classifier.bias"]
        zeros = [torch.zeros_like(weight)] * (outputs - 2)
        weights["classifier.weight"] = torch.cat([-weight / 2, weight / 2, *zeros])
        weights["classifier.bias"] = torch.cat([-bias / 2, bias / 2, *[torch.zeros_like(bias)] * (outputs - 2)])
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        labels = ["not_relevant", "relevant", "other"][:outputs]
        config = json.loads((folder / "config.json").read_text())
        config["id2label"] = dict(enumerate(labels))
        config["label2id"] = {label: index for index, label in enumerate(labels)}
        (folder / "config.json").write_text(json.dumps(config))
        st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
        st_config["activation_fn"] = "torch.nn.modules.linear.Identity"
        (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))
        return folder

    return build


def node(node_id: str, text: str, **metadata: object) -> NodeWithScore:
    return NodeWithScore(node=TextNode(id_=node_id, text=text, metadata=metadata), score=0.5)


def texts_read(scorer: CrossEncoderScorer, nodes: list[NodeWithScore], **rerank: object) -> list[tuple[str, str]]:
    recording = RecordingPairs(scorer)
    CrossEncoderRerank(recording, top_k=len(nodes), **rerank).postprocess_nodes(nodes, query_str=QUERY)
    return recording.pairs


# Metadata and instruction templates.


def test_metadata_keys_put_the_title_before_the_text_and_scores_equal_predict_on_the_same_pairs(scorer, reference):
    nodes = [
        node("a", "Daily vitamin D lowered hip fractures by a third.", title="Vitamin D trial", year=2020),
        node("b", "Calcium intake was not associated with bone density.", year=2019),
    ]
    template = PairTemplate(metadata_keys=("title", "year"))
    pairs = texts_read(scorer, nodes, template=template)
    assert [text for _, text in pairs] == [
        "title: Vitamin D trial\nyear: 2020\n\nDaily vitamin D lowered hip fractures by a third.",
        "year: 2019\n\nCalcium intake was not associated with bone density.",
    ]
    reranked = CrossEncoderRerank(scorer, top_k=2, template=template).postprocess_nodes(nodes, query_str=QUERY)
    expected = reference.predict(pairs)
    by_id = {scored.node.node_id: scored.score for scored in reranked}
    assert [by_id["a"], by_id["b"]] == pytest.approx(expected.tolist(), abs=1e-6)


def test_by_default_the_reranker_reads_what_the_bi_encoder_embedded(scorer):
    hidden = TextNode(id_="h", text="Body text.", metadata={"title": "T", "secret": "s"})
    hidden.excluded_embed_metadata_keys = ["secret"]
    [(_, text)] = texts_read(scorer, [NodeWithScore(node=hidden, score=0.1)])
    assert text == hidden.get_content(metadata_mode="embed") == "title: T\n\nBody text."
    [(_, alone)] = texts_read(scorer, [NodeWithScore(node=hidden, score=0.1)], template=PairTemplate(metadata_keys=()))
    assert alone == "Body text."


def test_instruction_templates_wrap_query_and_document_and_the_caller_nodes_stay_unchanged(scorer):
    nodes = [node("a", "Vitamin D and falls.", title="Falls")]
    before = nodes[0].node.model_dump()
    template = PairTemplate(
        query_template="<Instruct>: find evidence\n<Query>: {query}\n",
        document_template="<Document>: {document}",
        metadata_keys=("title",),
        metadata_template="# {value}",
    )
    [(query, text)] = texts_read(scorer, nodes, template=template)
    assert query == f"<Instruct>: find evidence\n<Query>: {QUERY}\n"
    assert text == "<Document>: # Falls\n\nVitamin D and falls."
    assert nodes[0].node.model_dump() == before


def test_changing_the_template_changes_the_cache_key(scorer):
    cache = ScoreCache(100)
    nodes = [node("a", "Vitamin D and falls.", title="Falls")]
    plain = RecordingPairs(scorer)
    alone = PairTemplate(metadata_keys=())
    CrossEncoderRerank(plain, score_cache=cache, template=alone).postprocess_nodes(nodes, query_str=QUERY)
    titled = RecordingPairs(scorer)
    rerank = CrossEncoderRerank(titled, score_cache=cache, template=PairTemplate(metadata_keys=("title",)))
    rerank.postprocess_nodes(nodes, query_str=QUERY)
    rerank.postprocess_nodes(nodes, query_str=QUERY)
    assert len(plain.pairs) == len(titled.pairs) == 1  # scored once per template, then answered by the cache
    assert plain.pairs != titled.pairs
    assert cache.stats().size == 2
    # The default reads the embedded text, which here is the same as the titled template: one more cache hit.
    default = RecordingPairs(scorer)
    CrossEncoderRerank(default, score_cache=cache).postprocess_nodes(nodes, query_str=QUERY)
    assert default.pairs == [] and cache.stats().size == 2


def test_settings_build_the_template_into_the_pipeline_reranker(settings_for, pipeline_for):
    settings = settings_for(
        "memory",
        rerank_metadata_keys=["title"],
        rerank_query_template="query: {query}",
        rerank_document_template="passage: {document}",
    )
    reranker = pipeline_for(settings).reranker()
    assert reranker.template == PairTemplate(
        query_template="query: {query}", document_template="passage: {document}", metadata_keys=("title",)
    )


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("rerank_query_template", "Query: {qeury}", "unknown placeholders ['qeury']"),
        ("rerank_document_template", "passage:", "lacks ['document']"),
        ("rerank_metadata_template", "{key}", "lacks ['value']"),
        ("rerank_query_template", "{query", "malformed"),
        ("rerank_metadata_keys", ["title", "title"], "repeat ['title']"),
    ],
)
def test_bad_templates_are_refused_with_what_to_write(settings_for, field, value, says):
    with pytest.raises(ValueError, match=f"(?s){field}.*{__import__('re').escape(says)}"):
        settings_for("memory", **{field: value})


# Long documents read as windows.


def long_text(words: int) -> str:
    sentence = "Serum vitamin D levels were measured in every participant at baseline and follow-up visits. "
    filler = (sentence * (words // 13 + 1)).split()[:words]
    return " ".join(filler[: words // 2] + ["Supplementation reduced hip fractures by thirty percent."] + filler)


def test_max_window_scores_the_best_window_and_counts_every_window_as_a_pair(scorer, reference):
    nodes = [node("long", long_text(400)), node("short", "Vitamin D reduced fractures.")]
    truncating = CrossEncoderRerank(scorer, top_k=2)
    windowing = CrossEncoderRerank(scorer, top_k=2, long_documents="max-window", window_overlap=16)
    cut = {n.node.node_id: n for n in truncating.postprocess_nodes(nodes, query_str=QUERY)}
    read = {n.node.node_id: n for n in windowing.postprocess_nodes(nodes, query_str=QUERY)}

    windows = scorer.window.split(QUERY, [long_text(400)], overlap=16)[0]
    assert len(windows) > 3
    assert all(window in long_text(400) for window in windows)  # slices of the text, nothing rewritten
    assert scorer.window.count_truncated(QUERY, windows) == 0
    assert read["long"].score == pytest.approx(float(reference.predict([(QUERY, w) for w in windows]).max()), abs=1e-6)
    assert read["short"].score == pytest.approx(cut["short"].score, abs=1e-6)

    info = read["long"].node.metadata["twostage"]
    assert info["pairs_scored"] == len(windows) + 1
    assert (info["documents_windowed"], info["pairs_truncated"]) == (1, 0)
    assert cut["long"].node.metadata["twostage"]["pairs_truncated"] == 1
    assert cut["long"].node.metadata["twostage"]["pairs_scored"] == 2


def test_consecutive_windows_overlap_and_cover_the_whole_text(scorer):
    text = " ".join(f"finding{number}." for number in range(300))  # every word unique: each window has one place
    windows = scorer.window.split(QUERY, [text], overlap=24)[0]
    assert len(windows) > 3
    assert text.startswith(windows[0]) and text.endswith(windows[-1])
    position = 0
    for window in windows:
        start = text.index(window)
        assert 0 < position - start < len(window) or start == 0  # overlaps the previous window, no gap
        position = start + len(window)
    assert position == len(text)


def test_max_window_needs_a_scorer_that_knows_its_tokenizer():
    with pytest.raises(ConfigurationError, match="max-window.*tokenizer"):
        CrossEncoderRerank(RecordingScorer(), long_documents="max-window")


# Heads with several outputs.


def test_a_two_output_head_reads_the_relevant_class_and_equals_the_original_model(multi_output_reranker, reference):
    folder = multi_output_reranker(2)
    two = CrossEncoderScorer.load(str(folder), max_length=128)
    texts = ["Vitamin D reduced fractures.", "Calcium is in milk.", long_text(60)]
    pairs = [(QUERY, text) for text in texts]
    raw = CrossEncoder(str(folder), max_length=128, device="cpu").predict(pairs)
    assert raw.shape == (3, 2)
    got = np.array(two.score(QUERY, texts))
    assert got == pytest.approx(raw[:, 1] - raw[:, 0], abs=1e-5)  # parity with predict on the same pairs
    original = reference.predict(pairs)  # the one-output model it was made from: sigmoid probabilities
    assert got == pytest.approx(np.log(original) - np.log1p(-original), abs=1e-3)
    normalized = CrossEncoderScorer.load(str(folder), max_length=128, normalize=True).score(QUERY, texts)
    assert normalized == pytest.approx(original, abs=1e-5)
    assert two.cache_key != CrossEncoderScorer.load(str(folder), max_length=128, relevant_class=0).cache_key


def test_relevant_class_zero_reverses_a_two_output_head(multi_output_reranker):
    folder = str(multi_output_reranker(2))
    texts = ["Vitamin D reduced fractures.", "Calcium is in milk."]
    relevant = CrossEncoderScorer.load(folder, max_length=128).score(QUERY, texts)
    reverse = CrossEncoderScorer.load(folder, max_length=128, relevant_class=0).score(QUERY, texts)
    assert reverse == pytest.approx([-score for score in relevant], abs=1e-5)


def test_heads_we_cannot_read_are_refused_naming_the_model_and_its_outputs(multi_output_reranker):
    folder = str(multi_output_reranker(3))
    with pytest.raises(ModelOutputError, match=r"gives 3 scores per pair.*not_relevant.*rerank_relevant_class"):
        CrossEncoderScorer.load(folder)
    with pytest.raises(ModelOutputError, match="out of range"):
        CrossEncoderScorer.load(folder, relevant_class=3)
    three = CrossEncoderScorer.load(folder, max_length=128, relevant_class=1)
    assert len(three.score(QUERY, ["Vitamin D reduced fractures."])) == 1


def test_a_two_output_model_ranks_through_the_pipeline(
    multi_output_reranker, settings_for, pipeline_for, ingested, same_ranking
):
    settings = settings_for(
        "embedded",
        collection=ingested.settings.collection,
        persist_dir=ingested.settings.persist_dir,
        rerank_model=str(multi_output_reranker(2)),
        rerank_relevant_class=1,
    )
    single = ingested.pipeline.two_stage_retriever().retrieve(QueryBundle(QUERY))
    double = pipeline_for(settings).two_stage_retriever().retrieve(QueryBundle(QUERY))
    # The single-output model's sigmoid scores crowd near 0.99, where float32 ties logits that differ by ~1e-5.
    logits = {n.node.node_id: n.score for n in double}
    same_ranking([n.node.node_id for n in single], [n.node.node_id for n in double], logits, tol=1e-3)


# The evaluation: SciFact with titles as metadata.


def test_evaluation_reads_the_title_only_when_asked(settings_for, tmp_path):
    subset = scifact_subset(title_as_metadata=True).limit(3)
    relevant = [doc_id for judged in subset.qrels.values() for doc_id in judged]
    others = [doc_id for doc_id in subset.corpus if doc_id not in relevant][:20]  # enough to rank against: cheap
    titled = replace(subset, corpus={doc_id: subset.corpus[doc_id] for doc_id in relevant + others})
    assert titled.name == "scifact-title-metadata"
    some_doc = next(iter(titled.corpus.values()))
    assert some_doc.metadata["title"] and some_doc.metadata["title"] not in some_doc.text
    settings = settings_for("embedded", persist_dir=tmp_path, recall_k=5, top_k=5, rerank_metadata_keys=[])
    without = evaluate(titled, settings, sweep=[5])
    with_title = evaluate(titled, settings.replace(rerank_metadata_keys=["title"]), sweep=[5])
    assert with_title.ingest["added"] == 0  # one stage 1 for both: only what the reranker reads differs
    assert [t.candidates for t in without.traces] == [t.candidates for t in with_title.traces]
    assert [t.rankings for t in without.traces] != [t.rankings for t in with_title.traces]
    assert (without.settings["rerank_metadata_keys"], with_title.settings["rerank_metadata_keys"]) == ([], ["title"])
