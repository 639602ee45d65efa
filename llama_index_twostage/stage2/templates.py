"""What the cross-encoder reads: the query and each candidate, formatted for the reranking model.

By default it reads exactly what the bi-encoder embedded. A :class:`PairTemplate` can instead put chosen metadata
(a title, a section heading, a date) before the text, whatever the bi-encoder saw, and wrap query and document in
the prefixes an instruction-style reranker expects. The reranker formats the pair before scoring, so every scorer
(local or on a server) reads the same text, and the score cache, keyed by the formatted text, never mixes scores of
two templates.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llama_index_twostage.nodes import model_text

METADATA_BLOCK_SEPARATOR = "\n\n"
"""Between the metadata block and the text, as in LlamaIndex's own node text."""


def check_template(template: str, placeholders: set[str], *, required: set[str] | None = None) -> str:
    """A ``str.format`` template using only ``placeholders`` (each of ``required`` at least once; literal braces
    doubled), refused with what to write instead: a typo would otherwise fail on the first query, not at setup."""
    required = placeholders if required is None else required
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise ValueError(
            f"template {template!r} is malformed ({error}): write a literal brace as '{{{{' or '}}}}'"
        ) from None
    unknown = sorted(set(fields) - placeholders)
    missing = sorted(required - set(fields))
    if unknown or missing:
        names = ", ".join("{" + name + "}" for name in sorted(placeholders))
        problem = f"unknown placeholders {unknown}" if unknown else f"it lacks {missing}"
        raise ValueError(f"template {template!r}: {problem}; it may use {names} (literal braces doubled)")
    return template


def check_metadata_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """A list of metadata keys, each once."""
    repeated = sorted({key for key in keys if list(keys).count(key) > 1})
    if repeated:
        raise ValueError(f"metadata keys repeat {repeated}: name each key once")
    return tuple(keys)


class PairTemplate(BaseModel):
    """How a (query, candidate) pair is written for the cross-encoder.

    Args:
        query_template: ``{query}`` and any instruction around it.
        document_template: ``{document}`` (the metadata block, a blank line, the text) and anything around it.
        metadata_keys: keys read from each node's metadata, in order; a node without a key skips it. None: the
            text the bi-encoder embedded, metadata included as it was embedded; ``()``: the text alone.
        metadata_template: one entry, from ``{key}`` and ``{value}``.
        metadata_separator: between entries.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    query_template: str = Field(
        "{query}", description="What the cross-encoder reads as the query, e.g. an instruction prefix."
    )
    document_template: str = Field(
        "{document}", description="What it reads as the candidate: {document} is the metadata block and the text."
    )
    metadata_keys: tuple[str, ...] | None = Field(
        None,
        description="Metadata keys the cross-encoder reads before each candidate's text, in this order (in the "
        "environment: comma-separated). Unset: the text the bi-encoder embedded (its embed metadata included); "
        "[] (or an empty variable): the text alone.",
    )
    metadata_template: str = Field("{key}: {value}", description="Format of one metadata entry.")
    metadata_separator: str = Field("\n", description="Between metadata entries.")

    @field_validator("query_template")
    @classmethod
    def _query_template(cls, value: str) -> str:
        return check_template(value, {"query"})

    @field_validator("document_template")
    @classmethod
    def _document_template(cls, value: str) -> str:
        return check_template(value, {"document"})

    @field_validator("metadata_template")
    @classmethod
    def _metadata_template(cls, value: str) -> str:
        return check_template(value, {"key", "value"}, required={"value"})

    @field_validator("metadata_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        """A list, or (from a variable) ``title,section`` or a JSON list; each key once."""
        if isinstance(value, str):
            value = (
                json.loads(value)
                if value.lstrip().startswith("[")
                else [key.strip() for key in value.split(",") if key.strip()]
            )
        return None if value is None else check_metadata_keys(value)

    def describe(self) -> str:
        """One line for ``twostage info``."""
        if self.metadata_keys is None:
            reads = "the text the bi-encoder embedded"
        else:
            reads = f"metadata {list(self.metadata_keys)} and the text" if self.metadata_keys else "the text alone"
        wrapped = (self.query_template, self.document_template) != ("{query}", "{document}")
        return reads + (f"; query {self.query_template!r}, document {self.document_template!r}" if wrapped else "")

    def query(self, query: str) -> str:
        return self.query_template.format_map({"query": query})

    def document(self, node: BaseNode) -> str | None:
        """The candidate as the cross-encoder reads it; None for a node without text (it is skipped, and said so)."""
        if self.metadata_keys is None:
            body = model_text(node)
        else:
            text = _text_alone(node)
            body = None if text is None else self._with_metadata(node.metadata, text)
        return None if body is None else self.document_template.format_map({"document": body})

    def _with_metadata(self, metadata: dict[str, Any], text: str) -> str:
        entries = [
            self.metadata_template.format_map({"key": key, "value": metadata[key]})
            for key in self.metadata_keys or ()
            if metadata.get(key) not in (None, "")
        ]
        return METADATA_BLOCK_SEPARATOR.join([self.metadata_separator.join(entries), text]) if entries else text


def _text_alone(node: BaseNode) -> str | None:
    if not isinstance(node, TextNode):
        return None
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    return text if text.strip() else None
