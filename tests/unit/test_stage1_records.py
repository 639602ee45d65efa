"""Stage 1 rebuilds nodes from Chroma records exactly as LlamaIndex would, and annotates them without copying."""

from __future__ import annotations

import logging

import pytest
from llama_index.core.schema import IndexNode, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from llama_index_twostage.nodes import STAGE_KEY, node_from_record
from llama_index_twostage.stage1 import ChromaRecallRetriever
from llama_index_twostage.store import ChromaStore


def stored(node: TextNode) -> tuple[str, str, dict]:
    """The (id, document, metadata) triple of a Chroma record written in LlamaIndex's layout."""
    return node.node_id, node.get_content(metadata_mode=MetadataMode.NONE), node_to_metadata_dict(node)


def rich_text_node() -> TextNode:
    return TextNode(
        id_="chunk-1",
        text="Folic acid lowered homocysteine by a quarter.",
        metadata={"title": "Trial", "year": 2004, "score": 0.5},
        excluded_llm_metadata_keys=["year"],
        excluded_embed_metadata_keys=["score"],
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc-7", metadata={"title": "Trial"})},
        start_char_idx=10,
        end_char_idx=55,
        metadata_template="{key}= {value}",
        text_template="META {metadata_str}\n\n{content}",
    )


def test_text_records_rebuild_the_same_node_as_llamaindex():
    node_id, document, metadata = stored(rich_text_node())
    expected = metadata_dict_to_node(metadata, text=document)
    expected.id_ = node_id
    rebuilt = node_from_record(node_id, document, metadata)
    assert type(rebuilt) is TextNode
    assert rebuilt.model_dump() == expected.model_dump()
    assert rebuilt.ref_doc_id == "doc-7"
    assert rebuilt.get_content(MetadataMode.EMBED) == expected.get_content(MetadataMode.EMBED)


def test_the_record_id_and_document_win_over_the_serialized_ones():
    _, document, metadata = stored(rich_text_node())
    rebuilt = node_from_record("id-in-chroma", "text in chroma", metadata)
    assert (rebuilt.node_id, rebuilt.text) == ("id-in-chroma", "text in chroma")


def test_other_node_types_go_through_llamaindex():
    index_node = IndexNode(id_="idx", text="points elsewhere", index_id="other-index")
    node_id, document, metadata = stored(index_node)
    rebuilt = node_from_record(node_id, document, metadata)
    assert isinstance(rebuilt, IndexNode) and rebuilt.index_id == "other-index"


@pytest.mark.parametrize("metadata", [None, {}, {"source": "plain"}])
def test_records_written_by_other_code_become_plain_text_nodes(metadata):
    rebuilt = node_from_record("r1", "raw text", metadata)
    assert (rebuilt.node_id, rebuilt.text, rebuilt.metadata) == ("r1", "raw text", metadata or {})


def test_stage_info_is_built_into_the_node_hidden_from_llm_and_embedding():
    node_id, document, metadata = stored(rich_text_node())
    before = dict(metadata)
    rebuilt = node_from_record(node_id, document, metadata, {"stage1_rank": 3, "stage1_score": 0.71})
    plain = node_from_record(node_id, document, metadata)
    assert rebuilt.metadata == {**plain.metadata, STAGE_KEY: {"stage1_rank": 3, "stage1_score": 0.71}}
    assert rebuilt.excluded_llm_metadata_keys == ["year", STAGE_KEY]
    assert rebuilt.excluded_embed_metadata_keys == ["score", STAGE_KEY]
    assert rebuilt.get_content(MetadataMode.LLM) == plain.get_content(MetadataMode.LLM)
    assert rebuilt.get_content(MetadataMode.EMBED) == plain.get_content(MetadataMode.EMBED)
    assert metadata == before  # Chroma's record is left as it came


@pytest.mark.parametrize("kind", ["plain", "index"])
def test_stage_info_reaches_every_kind_of_record(kind):
    if kind == "plain":
        node_id, document, metadata = "r1", "raw text", {"source": "plain"}
    else:
        node_id, document, metadata = stored(IndexNode(id_="idx", text="points elsewhere", index_id="other-index"))
    rebuilt = node_from_record(node_id, document, metadata, {"stage1_rank": 1})
    assert rebuilt.node_id == node_id and rebuilt.metadata[STAGE_KEY] == {"stage1_rank": 1}
    assert STAGE_KEY in rebuilt.excluded_llm_metadata_keys and STAGE_KEY not in metadata


def test_an_index_that_finds_fewer_than_the_collection_holds_is_named(hash_embedding, caplog) -> None:
    """Fewer than recall_k back from a large collection: the approximate index lost candidates (say what to raise);
    from a small collection: it simply holds no more."""
    retriever = ChromaRecallRetriever(ChromaStore("warned", mode="memory"), hash_embedding, recall_k=100)
    with caplog.at_level(logging.WARNING):
        retriever._explain_short(returned=74, count=100_000)
        retriever._explain_short(returned=12, count=12)
    first, second = caplog.messages
    assert "approximate index returned only 74 of the 100000 nodes" in first and "hnsw_ef_search" in first
    assert "holds only 12 nodes" in second
