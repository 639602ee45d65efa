"""What both stages agree on: a valid query, the text a model reads, and where each stage records what it did.

Stage information lives in one metadata entry, ``node.metadata["twostage"]``, hidden from the LLM and from
embedding text, and is always written on a copy: the caller's nodes are never mutated.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from llama_index_twostage.errors import EmptyQueryError, InvalidQueryError

STAGE_KEY = "twostage"
_HIDDEN_FROM = ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys")


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


def _stage_fields(node: BaseNode, info: dict[str, Any]) -> dict[str, Any]:
    """The node fields that carry ``info``: its metadata with the merged stage entry, hidden from LLM and embedding."""
    metadata = dict(node.metadata)
    metadata[STAGE_KEY] = {**(node.metadata.get(STAGE_KEY) or {}), **info}
    fields: dict[str, Any] = {"metadata": metadata}
    for name in _HIDDEN_FROM:
        keys = list(getattr(node, name))
        if STAGE_KEY not in keys:
            fields[name] = [*keys, STAGE_KEY]
    return fields


def annotated(scored: NodeWithScore, *, score: float | None = None, **info: Any) -> NodeWithScore:
    """A copy of ``scored`` with ``info`` merged into its stage metadata and, if given, a new score."""
    node = scored.node.model_copy(update=_stage_fields(scored.node, info))
    return NodeWithScore(node=node, score=scored.score if score is None else score)


def annotate_new(node: BaseNode, **info: Any) -> BaseNode:
    """``node`` with ``info`` written into its stage metadata in place, for a node the stage has just built.

    No other code holds such a node yet, so the copy :func:`annotated` makes would only cost time on the hot path
    (a hundred nodes per query in stage 1).
    """
    node.__dict__.update(_stage_fields(node, info))
    return node
