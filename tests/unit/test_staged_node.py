"""A retrieved chunk keeps the identity of the stored one: per-query diagnostics change neither its hash nor what
is serialized of it, and the caller's nodes are never changed."""

from llama_index.core.schema import ImageNode, NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from llama_index_twostage.nodes import StagedNode, annotated, node_from_record, stage_info, with_stage_info


def chunk() -> TextNode:
    return TextNode(
        id_="c1",
        text="Vitamin D and falls.",
        metadata={"title": "Falls", "year": 2001},
        excluded_llm_metadata_keys=["year"],
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc-1")},
    )


def test_diagnostics_change_neither_id_nor_hash():
    stored = chunk()
    first = with_stage_info(stored, stage1_rank=3, stage1_score=0.7)
    second = annotated(NodeWithScore(node=first, score=0.7), score=2.5, final_rank=1).node
    assert type(first) is StagedNode and type(second) is StagedNode
    assert stage_info(NodeWithScore(node=second)) == {"stage1_rank": 3, "stage1_score": 0.7, "final_rank": 1}
    assert first.node_id == second.node_id == stored.node_id
    assert first.hash == second.hash == stored.hash
    assert with_stage_info(stored, text_changed=True).model_copy(update={"text": "other"}).hash != stored.hash
    assert stored.metadata == {"title": "Falls", "year": 2001} and stored.excluded_llm_metadata_keys == ["year"]


def test_serialized_forms_hold_the_chunk_as_stored():
    stored = chunk()
    staged = with_stage_info(stored, stage1_rank=1)
    assert staged.to_dict() == stored.to_dict()
    assert staged.model_dump(mode="json") == stored.model_dump(mode="json")
    assert "twostage" in staged.excluded_llm_metadata_keys  # in memory the entry is hidden from the LLM ...
    assert staged.get_content(metadata_mode="llm") == stored.get_content(metadata_mode="llm")
    back = metadata_dict_to_node(node_to_metadata_dict(staged))  # ... and a vector store receives the chunk alone
    assert type(back) is TextNode and back.hash == stored.hash and back.metadata == stored.metadata


def test_records_rebuilt_with_diagnostics_hash_like_those_without():
    metadata = node_to_metadata_dict(chunk(), remove_text=True, flat_metadata=True)
    plain = node_from_record("c1", "Vitamin D and falls.", metadata)
    staged = node_from_record("c1", "Vitamin D and falls.", metadata, {"stage1_rank": 1})
    assert type(plain) is TextNode and type(staged) is StagedNode
    assert staged.hash == plain.hash


def test_other_node_types_keep_their_type():
    image = ImageNode(id_="i", text="caption", image_url="http://example.invalid/a.png")
    staged = with_stage_info(image, stage1_rank=1)
    assert type(staged) is ImageNode and staged.metadata["twostage"] == {"stage1_rank": 1}
    assert "twostage" not in image.metadata
