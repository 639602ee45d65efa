"""What both stages agree on: a valid query, the text a model reads, and where each stage records what it did.

Stage information lives in one metadata entry, ``node.metadata["twostage"]``, hidden from the LLM and from
embedding text, and is always written on a copy: the caller's nodes are never mutated. Text nodes that carry it are
:class:`StagedNode`: one chunk keeps one ``node_id`` and one ``hash`` whatever a query recorded on it, so LlamaIndex's
fusion, dedup and docstores treat copies from different retrievers as the same chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.bridge.pydantic import SerializationInfo, SerializerFunctionWrapHandler, model_serializer
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node
from pydantic_core import from_json

from llama_index_twostage.errors import DocumentError, EmptyQueryError, InvalidQueryError

STAGE_KEY = "twostage"
_HIDDEN_FROM = ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys")


def _without_stage(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metadata.items() if key != STAGE_KEY}


class StagedNode(TextNode):
    """A stored chunk as one query saw it: ``metadata["twostage"]`` holds that query's diagnostics (ranks, scores,
    timings; read them with :func:`stage_info`).

    The diagnostics are not the chunk: they are left out of ``hash`` (LlamaIndex's ``QueryFusionRetriever`` fuses by
    hash, so the same chunk from our retrievers and from a stock one must hash alike) and out of every serialized
    form (``to_dict``, ``model_dump``, a docstore, a vector store), which holds the chunk as stored and reads back as
    the plain ``TextNode`` it was, with the same id and hash.
    """

    @classmethod
    def class_name(cls) -> str:
        return TextNode.class_name()

    @property
    def hash(self) -> str:
        return TextNode.hash.fget(self.model_copy(update={"metadata": _without_stage(self.metadata)}))

    @model_serializer(mode="wrap")
    def custom_model_dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        data = super().custom_model_dump(handler, info)
        if isinstance(data.get("metadata"), dict):
            data["metadata"] = _without_stage(data["metadata"])
        for name in _HIDDEN_FROM:
            if isinstance(data.get(name), list):
                data[name] = [key for key in data[name] if key != STAGE_KEY]
        return data


def query_text(query_bundle: QueryBundle) -> str:
    """The query string, refused when it is empty (no meaning to either model) or not valid Unicode."""
    text = query_bundle.query_str
    if not isinstance(text, str) or not text.strip():
        raise EmptyQueryError("the query is empty: pass a question or search text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # the tokenizers would fail with an opaque TypeError
        raise InvalidQueryError(
            f"the query holds an unpaired surrogate at position {error.start} (broken Unicode, e.g. a JSON "
            "'\\ud800' escape): send valid UTF-8 text"
        ) from None
    return text


def model_text(node: BaseNode) -> str | None:
    """The text the bi-encoder embeds and the cross-encoder reads; None for nodes without text."""
    if not isinstance(node, TextNode):
        return None
    text = node.get_content(metadata_mode=MetadataMode.EMBED)
    return text if text.strip() else None


def stage_info(scored: NodeWithScore) -> dict[str, Any]:
    """What the stages recorded on this node (empty for nodes that did not come through them)."""
    return dict(scored.node.metadata.get(STAGE_KEY) or {})


def stage_fields(node_id: str, fields: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """From a node's ``metadata`` and exclusion lists: the metadata with ``info`` merged into its stage entry, and
    the exclusion lists that hide that entry from the LLM and the embedding (new objects: nothing is mutated).

    A node whose own metadata holds something else under the key (written by other code: this package's ingest
    refuses it) is refused by id rather than losing that value from the result.
    """
    metadata = dict(fields.get("metadata") or {})
    entry = metadata.get(STAGE_KEY) or {}
    if not isinstance(entry, Mapping):
        raise DocumentError(
            f"node {node_id!r} holds its own metadata {STAGE_KEY!r} (a {type(entry).__name__}), the key each "
            f"result's stage information is kept under: rename that key in the stored records"
        )
    metadata[STAGE_KEY] = {**entry, **info}
    updated: dict[str, Any] = {"metadata": metadata}
    for name in _HIDDEN_FROM:
        keys = list(fields.get(name) or [])
        if STAGE_KEY not in keys:
            updated[name] = [*keys, STAGE_KEY]
    return updated


def with_stage_info(node: BaseNode, **info: Any) -> BaseNode:
    """A copy of ``node`` whose stage metadata holds ``info`` as well (a plain ``TextNode`` becomes a
    :class:`StagedNode`; other node types keep their type, and their hash covers the entry). Its dicts are its own:
    editing the copy's metadata or relationships leaves the caller's node as it was."""
    current = {"metadata": node.metadata, **{name: getattr(node, name) for name in _HIDDEN_FROM}}
    update = {**stage_fields(node.node_id, current, info), "relationships": dict(node.relationships)}
    if type(node) is TextNode:
        return StagedNode.model_construct(**{**dict(node), **update})
    return node.model_copy(update=update)


def annotated(scored: NodeWithScore, *, score: float | None = None, **info: Any) -> NodeWithScore:
    """A copy of ``scored`` with ``info`` merged into its stage metadata and, if given, a new score."""
    return NodeWithScore(node=with_stage_info(scored.node, **info), score=scored.score if score is None else score)


def node_from_record(
    node_id: str, document: str | None, metadata: dict[str, Any] | None, info: dict[str, Any] | None = None
) -> BaseNode:
    """Rebuild a node from a Chroma record in LlamaIndex's layout (or wrap a plain record written by other code),
    with ``info`` already in its stage metadata.

    Text nodes, a hundred per query, are parsed by pydantic's JSON parser and built, stage metadata included, in one
    validated construction; other node types go through LlamaIndex's own ``metadata_dict_to_node``.
    """
    metadata = metadata or {}
    if metadata.get("_node_type", TextNode.class_name()) != TextNode.class_name():
        node = metadata_dict_to_node(metadata, text=document).model_copy(update={"id_": node_id})
        return with_stage_info(node, **info) if info else node
    if "_node_content" in metadata:
        fields = from_json(metadata["_node_content"])
        fields.pop("class_name", None)
        if document is not None:
            fields["text"] = document
    else:
        fields = {"text": document or "", "metadata": metadata}
    fields["id_"] = node_id
    if not info:
        return TextNode(**fields)
    fields.update(stage_fields(node_id, fields, info))
    return StagedNode(**fields)
