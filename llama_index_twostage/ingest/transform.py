"""Any LlamaIndex transformation chain between documents and stored chunks: node parsers, extractors, or nodes the
user already has.

Ingestion stays idempotent whatever the chain: it runs on one document at a time, its configuration is part of each
document's hash (a changed chain re-splits, an unchanged document is not split again), and every chunk is re-keyed
by its source and content (``chunk_id``), with the parent/child and previous/next links the parsers set rewritten to
those ids, so they survive storage and come back on retrieval.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import run_transformations
from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter
from llama_index.core.schema import BaseNode, Document, NodeRelationship, RelatedNodeInfo, TransformComponent

from llama_index_twostage.errors import ConfigurationError, DocumentError
from llama_index_twostage.ingest.documents import metadata_problem, text_problem

SPLITTERS = "sentence, markdown, semantic or code:LANG (e.g. code:python)"


def check_splitter(name: str) -> str:
    """A splitter name :func:`preset` knows (whether a code language is known shows when it is built)."""
    if name in ("sentence", "markdown", "semantic") or (name.startswith("code:") and name[5:].strip()):
        return name
    raise ValueError(f"unknown splitter {name!r}: choose {SPLITTERS}")


class NodeSplitter(Protocol):
    """What turns one document into its chunks (LlamaIndex's node parsers have this method)."""

    def get_nodes_from_documents(self, documents: Sequence[Document]) -> list[BaseNode]: ...


class Splitting(Protocol):
    """How ingestion chunks: a splitter, and what of it goes into each document's hash."""

    @property
    def identity(self) -> tuple[int, int] | str: ...

    def splitter(self) -> NodeSplitter: ...


@dataclass(frozen=True)
class Chunking:
    """How documents are split: LlamaIndex's ``SentenceSplitter`` with this chunk size and overlap, in tokens."""

    chunk_size: int = 512
    chunk_overlap: int = 64

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or not 0 <= self.chunk_overlap < self.chunk_size:
            raise ConfigurationError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size}), "
                "and neither negative"
            )

    @property
    def identity(self) -> tuple[int, int]:
        """What of the chunking goes into each document's hash."""
        return (self.chunk_size, self.chunk_overlap)

    def splitter(self) -> SentenceSplitter:
        return SentenceSplitter(
            chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap, include_prev_next_rel=False
        )


def preset(name: str, chunking: Chunking, embed_model: BaseEmbedding) -> Transformations | None:
    """The transformations a ``splitter`` setting names; None for ``sentence`` (``chunking`` as it is).

    ``markdown`` splits at headings (each chunk records its ``header_path``), then sentences within ``chunk_size``;
    ``code:LANG`` splits source code at syntax boundaries (tree-sitter, the ``files`` extra); ``semantic`` splits
    where the embeddings of consecutive sentences diverge (one embedding per sentence: slow on large corpora).
    """
    from llama_index.core.node_parser import CodeSplitter, SemanticSplitterNodeParser

    if name == "sentence":
        return None
    if name == "markdown":
        sentences = SentenceSplitter(chunk_size=chunking.chunk_size, chunk_overlap=chunking.chunk_overlap)
        return Transformations([MarkdownNodeParser(), sentences])
    if name == "semantic":
        return Transformations([SemanticSplitterNodeParser(embed_model=embed_model)])
    if not name.startswith("code:"):
        raise ConfigurationError(f"unknown splitter {name!r}: choose {SPLITTERS}")
    try:
        return Transformations([CodeSplitter(language=name[5:].strip())])
    except ImportError:
        raise ConfigurationError(
            f"splitter {name!r} needs tree-sitter: pip install 'llama-index-twostage[files]'"
        ) from None
    except (LookupError, ValueError) as error:  # a language tree-sitter does not know
        reason = str(error).splitlines()[0]
        raise ConfigurationError(
            f"splitter {name!r}: {reason}; name a language tree-sitter knows (code:python)"
        ) from None


def _identity(component: TransformComponent) -> dict[str, Any]:
    kind = type(component)
    return {"type": f"{kind.__module__}.{kind.__qualname__}", "config": component.to_dict()}


@dataclass(frozen=True, init=False)
class Transformations:
    """LlamaIndex transformations run in order on each document, as ``IngestionPipeline`` runs them, minus the
    embedding (ingestion embeds with the collection's model). The caller's documents are not modified.

    ``identity`` goes into each document's hash: changing the chain or its settings re-splits every document.
    """

    components: tuple[TransformComponent, ...]

    def __init__(self, components: Iterable[TransformComponent]) -> None:
        components = tuple(components)
        if not components:
            raise ConfigurationError("transformations is empty: give at least a node parser (e.g. SentenceSplitter)")
        for component in components:
            if isinstance(component, BaseEmbedding):
                raise ConfigurationError(
                    f"transformations hold an embedding ({type(component).__name__}): leave it out and pass it as "
                    "embed_model (ingestion embeds with the collection's model)"
                )
            if not isinstance(component, TransformComponent):
                raise ConfigurationError(f"{component!r} is not a LlamaIndex TransformComponent")
        object.__setattr__(self, "components", components)

    @property
    def identity(self) -> str:
        payload = json.dumps([_identity(component) for component in self.components], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def splitter(self) -> Transformations:
        return self

    def get_nodes_from_documents(self, documents: Sequence[Document]) -> list[BaseNode]:
        """The chain's nodes for one document, checked for what Chroma can store."""
        (document,) = documents
        copy = document.model_copy(deep=True)  # extractors write metadata in place
        return checked_nodes(document.id_, run_transformations([copy], list(self.components)))


@dataclass(frozen=True)
class GivenNodes:
    """Nodes the user already has (parsed elsewhere), stored as the chunks of their source documents.

    Each source gets a stand-in document whose text is its nodes' content, so the source's hash changes exactly when
    one of its nodes does (ids aside: parsers draw random ones, and ingestion re-keys them by content anyway).
    """

    by_source: dict[str, list[BaseNode]]
    identity: str = "given-nodes"

    @classmethod
    def of(cls, nodes: Iterable[BaseNode]) -> GivenNodes:
        by_source: dict[str, list[BaseNode]] = {}
        for node in nodes:
            if not node.ref_doc_id:
                raise DocumentError(
                    f"node {node.node_id!r} has no source document: set node.relationships[NodeRelationship.SOURCE] "
                    "(node parsers do) so its chunks can be replaced when the source changes"
                )
            by_source.setdefault(node.ref_doc_id, []).append(node)
        return cls(by_source)

    def documents(self) -> list[Document]:
        stand_ins = []
        for source_id, nodes in self.by_source.items():
            content = [node.model_dump(mode="json", exclude={"id_", "embedding", "relationships"}) for node in nodes]
            stand_ins.append(Document(id_=source_id, text=json.dumps(content, sort_keys=True, default=str)))
        return stand_ins

    def splitter(self) -> GivenNodes:
        return self

    def get_nodes_from_documents(self, documents: Sequence[Document]) -> list[BaseNode]:
        (document,) = documents
        return checked_nodes(document.id_, [node.model_copy(deep=True) for node in self.by_source[document.id_]])


def checked_nodes(source_id: str, nodes: Sequence[BaseNode]) -> list[BaseNode]:
    """``nodes``, refused (named) where a transformation left text or metadata Chroma cannot store, each pointing at
    ``source_id`` as its source (a chain of parsers may point a chunk at an intermediate node)."""
    checked = []
    for node in nodes:
        problems = [
            (f"metadata key {key!r}", metadata_problem(key, value, source_id)) for key, value in node.metadata.items()
        ]
        problems.append(("text", text_problem(node.get_content())))
        for what, problem in problems:
            if problem:
                raise DocumentError(f"document {source_id!r}: a chunk's {what} {problem}")
        if node.ref_doc_id != source_id:
            source = node.relationships.get(NodeRelationship.SOURCE) or RelatedNodeInfo(node_id=source_id)
            assert isinstance(source, RelatedNodeInfo)
            relationships = {
                **node.relationships,
                NodeRelationship.SOURCE: source.model_copy(update={"node_id": source_id}),
            }
            node = node.model_copy(update={"relationships": relationships})
        checked.append(node)
    return checked


def rekeyed(nodes: Sequence[BaseNode], new_id: Callable[[BaseNode], str]) -> list[BaseNode]:
    """``nodes`` under their new ids, with the links between them (parent, child, previous, next) rewritten to those
    ids; links to nodes that are not among them (an intermediate node of a chain) are dropped, never left dangling.
    The nodes are the splitter's own, updated in place."""
    ids = {node.node_id: new_id(node) for node in nodes}

    def moved(related: RelatedNodeInfo) -> RelatedNodeInfo | None:
        target = ids.get(related.node_id)
        return None if target is None else related.model_copy(update={"node_id": target})

    for node in nodes:
        relationships: dict[NodeRelationship, Any] = {}
        for kind, related in node.relationships.items():
            if kind == NodeRelationship.SOURCE:
                relationships[kind] = related
            elif isinstance(related, list):
                kept = [link for link in map(moved, related) if link is not None]
                if kept:
                    relationships[kind] = kept
            elif (link := moved(related)) is not None:
                relationships[kind] = link
        node.relationships = relationships
        node.id_ = ids[node.node_id]
    return list(nodes)
