"""Stage metadata written on copies and hidden from models; candidate selection before the cross-encoder."""

from __future__ import annotations

import copy

import pytest
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from llama_index_twostage.errors import DocumentError, EmptyQueryError
from llama_index_twostage.nodes import STAGE_KEY, annotated, model_text, node_from_record, query_text, stage_info
from llama_index_twostage.stage2.rerank import select_candidates


def scored(node_id: str, text: str = "some text", score: float = 0.5, **metadata) -> NodeWithScore:
    return NodeWithScore(node=TextNode(id_=node_id, text=text, metadata=metadata), score=score)


def test_annotated_returns_a_copy_and_leaves_the_original_alone():
    original = NodeWithScore(
        node=TextNode(
            id_="n1",
            text="body",
            metadata={"source": "a.txt"},
            excluded_llm_metadata_keys=["source"],
            excluded_embed_metadata_keys=[],
        ),
        score=0.4,
    )
    before = copy.deepcopy(original)
    result = annotated(original, score=0.9, stage1_rank=1)

    assert result is not original and result.node is not original.node
    assert original.node.metadata == before.node.metadata
    assert original.node.excluded_llm_metadata_keys == ["source"]
    assert original.node.excluded_embed_metadata_keys == []
    assert original.score == 0.4
    assert result.score == 0.9
    assert result.node.metadata == {"source": "a.txt", STAGE_KEY: {"stage1_rank": 1}}
    assert result.node.node_id == "n1"
    result.node.relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id="n2")  # edited downstream
    assert original.node.relationships == before.node.relationships


def test_annotated_merges_stage_info_and_keeps_score_by_default():
    first = annotated(scored("n"), stage1_rank=3, stage1_score=0.7)
    second = annotated(first, final_rank=1)
    assert stage_info(second) == {"stage1_rank": 3, "stage1_score": 0.7, "final_rank": 1}
    assert second.score == 0.5
    assert stage_info(first) == {"stage1_rank": 3, "stage1_score": 0.7}  # the earlier copy is untouched


def test_stage_key_is_hidden_from_llm_and_embedding_text():
    result = annotated(scored("n", text="the body", source="file.txt"), stage1_rank=1, stage1_score=0.123456)
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        content = result.node.get_content(metadata_mode=mode)
        assert STAGE_KEY not in content and "0.123456" not in content
        assert "source: file.txt" in content and "the body" in content
    assert STAGE_KEY in result.node.get_content(metadata_mode=MetadataMode.ALL)


def test_stage_key_is_listed_once_after_repeated_annotation():
    twice = annotated(annotated(scored("n"), a=1), b=2)
    assert twice.node.excluded_llm_metadata_keys.count(STAGE_KEY) == 1
    assert twice.node.excluded_embed_metadata_keys.count(STAGE_KEY) == 1


@pytest.mark.parametrize("foreign", ["written elsewhere", 3, ["a"]])
def test_a_node_holding_its_own_stage_key_is_refused_by_id_not_overwritten(foreign):
    """Records written by other code may hold a ``twostage`` value of their own: the result would lose it, so the
    node is named instead (through both routes that add stage information)."""
    node = scored("foreign-1", source="x.txt")
    node.node.metadata[STAGE_KEY] = foreign
    with pytest.raises(DocumentError, match=r"node 'foreign-1' holds its own metadata 'twostage'.*rename that key"):
        annotated(node, stage1_rank=1)
    assert node.node.metadata[STAGE_KEY] == foreign
    with pytest.raises(DocumentError, match="node 'record-7'"):
        node_from_record("record-7", "text", {STAGE_KEY: foreign}, {"stage1_rank": 1})


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_queries_are_refused(query):
    with pytest.raises(EmptyQueryError, match="query is empty"):
        query_text(QueryBundle(query_str=query))


def test_model_text_excludes_hidden_metadata():
    node = TextNode(text="body", metadata={"title": "T", "secret": "s"}, excluded_embed_metadata_keys=["secret"])
    text = model_text(node)
    assert "body" in text and "title: T" in text and "secret" not in text


def test_select_candidates_dedupes_keeping_the_first():
    nodes = [scored("a", "first a", 0.9), scored("b", "b", 0.8), scored("a", "second a", 0.7), scored("a", "x", 0.1)]
    candidates = select_candidates(nodes)
    assert [c.node.node_id for c in candidates.scorable] == ["a", "b"]
    assert candidates.scorable[0] is nodes[0]
    assert candidates.texts == ["first a", "b"]
    assert candidates.duplicate_ids == ["a", "a"]
    assert candidates.non_text_ids == []


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_select_candidates_reports_text_nodes_without_text(text):
    candidates = select_candidates([scored("empty", text), scored("full", "words")])
    assert candidates.non_text_ids == ["empty"]
    assert [c.node.node_id for c in candidates.scorable] == ["full"]
    assert candidates.texts == ["words"]


def test_select_candidates_reports_image_nodes():
    schema = pytest.importorskip("llama_index.core.schema")
    if not hasattr(schema, "ImageNode"):
        pytest.skip("this llama_index.core has no ImageNode")
    image = NodeWithScore(node=schema.ImageNode(id_="img", image="aGVsbG8="), score=0.9)
    candidates = select_candidates([image, scored("t", "text")])
    assert candidates.non_text_ids == ["img"]
    assert [c.node.node_id for c in candidates.scorable] == ["t"]


def test_select_candidates_reports_a_duplicate_of_a_non_text_node_once_as_non_text():
    candidates = select_candidates([scored("e", ""), scored("e", "")])
    assert candidates.non_text_ids == ["e"]
    assert candidates.duplicate_ids == ["e"]


# What the cross-encoder reads (issue 14): templates and windows, as logic.


def test_pair_template_skips_absent_metadata_and_keeps_text_less_nodes_out():
    from llama_index.core.schema import ImageNode

    from llama_index_twostage.stage2 import PairTemplate

    template = PairTemplate(metadata_keys=("title", "year"), metadata_separator=" | ")
    assert template.document(TextNode(text="Body.", metadata={"title": "T", "year": None})) == "title: T\n\nBody."
    assert template.document(TextNode(text="Body.", metadata={"title": "T", "year": 2020})) == (
        "title: T | year: 2020\n\nBody."
    )
    assert template.document(TextNode(text="Body.")) == "Body."
    assert template.document(TextNode(text="  ", metadata={"title": "T"})) is None  # metadata alone is not a text
    assert template.document(ImageNode(image="aGk=", metadata={"title": "T"})) is None
    assert PairTemplate(query_template="q: {query} {{literal}}").query("x") == "q: x {literal}"


def test_pair_template_checks_its_own_rules():
    from llama_index_twostage.stage2 import PairTemplate

    with pytest.raises(ValueError, match="lacks"):
        PairTemplate(document_template="no placeholder")
    with pytest.raises(ValueError, match="repeat"):
        PairTemplate(metadata_keys=("title", "title"))
    assert PairTemplate(metadata_keys="title, year").metadata_keys == ("title", "year")  # as a variable gives them


@pytest.mark.parametrize(("size", "overlap"), [(4, 1), (5, 2), (3, 0), (7, 3)])
def test_word_windows_cover_the_text_in_whole_words_with_overlap(size, overlap):
    from llama_index_twostage.stage2.scorers import word_windows

    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda"
    offsets, position = [], 0
    for word in text.split():  # one token per word, like a whitespace tokenizer
        start = text.index(word, position)
        offsets.append((start, start + len(word)))
        position = start + len(word)
    windows = word_windows(text, offsets, size, overlap)
    assert windows[0].startswith("alpha") and windows[-1].endswith("lambda")
    assert all(len(window.split()) <= size for window in windows)
    words = text.split()
    for previous, current in zip(windows, windows[1:]):
        shared = set(previous.split()) & set(current.split())
        assert len(shared) == overlap
        assert words.index(current.split()[0]) <= words.index(previous.split()[-1]) + 1  # no word skipped


def test_word_windows_do_not_cut_inside_a_word_when_a_boundary_is_near():
    from llama_index_twostage.stage2.scorers import word_windows

    text = "ab cd efgh ij"  # tokens: ab, cd, ef, ##gh, ij
    offsets = [(0, 2), (3, 5), (6, 8), (8, 10), (11, 13)]
    windows = word_windows(text, offsets, 3, 0)
    assert windows == ["ab cd", "efgh ij"]


def test_the_stage_entry_is_a_reserved_metadata_key_of_documents():
    """Found by the fuzz test: a document with its own ``twostage`` value was stored, and retrieving it failed when
    the stages merged their entry into that value."""
    from llama_index_twostage.ingest.documents import metadata_problem

    assert metadata_problem(STAGE_KEY, "0", "doc") == "is reserved for the records this package writes"
    assert metadata_problem("stage", "0", "doc") is None
