"""What the cross-encoder reads: the query and each candidate, formatted for the reranking model.

By default it reads exactly what the bi-encoder embedded. A :class:`PairTemplate` can instead put chosen metadata
(a title, a section heading, a date) before the text, whatever the bi-encoder saw, and wrap query and document in
the prefixes an instruction-style reranker expects. The reranker formats the pair before scoring, so every scorer
(local or on a server) reads the same text, and the score cache, keyed by the formatted text, never mixes scores of
two templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode, TextNode

from llama_index_twostage.nodes import model_text
from llama_index_twostage.settings import RetrieverSettings, check_metadata_keys, check_template

METADATA_BLOCK_SEPARATOR = "\n\n"
"""Between the metadata block and the text, as in LlamaIndex's own node text."""


@dataclass(frozen=True)
class PairTemplate:
    """How a (query, candidate) pair is written for the cross-encoder.

    Args:
        query_template: ``{query}`` and any instruction around it.
        document_template: ``{document}`` (the metadata block, a blank line, the text) and anything around it.
        metadata_keys: keys read from each node's metadata, in order; a node without a key skips it. None: the
            text the bi-encoder embedded, metadata included as it was embedded; ``()``: the text alone.
        metadata_template: one entry, from ``{key}`` and ``{value}``.
        metadata_separator: between entries.
    """

    query_template: str = "{query}"
    document_template: str = "{document}"
    metadata_keys: tuple[str, ...] | None = None
    metadata_template: str = "{key}: {value}"
    metadata_separator: str = "\n"

    def __post_init__(self) -> None:
        check_template(self.query_template, {"query"})
        check_template(self.document_template, {"document"})
        check_template(self.metadata_template, {"key", "value"}, required={"value"})
        if self.metadata_keys is not None:
            object.__setattr__(self, "metadata_keys", tuple(check_metadata_keys(self.metadata_keys)))

    @classmethod
    def from_settings(cls, settings: RetrieverSettings) -> PairTemplate:
        keys = settings.rerank_metadata_keys
        return cls(
            query_template=settings.rerank_query_template,
            document_template=settings.rerank_document_template,
            metadata_keys=None if keys is None else tuple(keys),
            metadata_template=settings.rerank_metadata_template,
            metadata_separator=settings.rerank_metadata_separator,
        )

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
