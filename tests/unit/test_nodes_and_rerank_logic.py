"""Stage metadata written on copies and hidden from models; candidate selection before the cross-encoder."""

from __future__ import annotations

import copy

import pytest
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from llama_index_twostage.errors import EmptyQueryError
from llama_index_twostage.nodes import STAGE_KEY, annotated, model_text, query_text, stage_info
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
