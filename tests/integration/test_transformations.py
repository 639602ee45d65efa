"""Any LlamaIndex transformation chain, and nodes parsed elsewhere, ingest as idempotently as the default chunking:
ids from source and content, a re-run adds nothing, an edit re-embeds only the chunks whose text changed, and the
links parsers set between chunks are stored and come back on retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from llama_index.core import Document
from llama_index.core.extractors import BaseExtractor
from llama_index.core.node_parser import HierarchicalNodeParser, MarkdownNodeParser, SentenceSplitter
from llama_index.core.schema import BaseNode, TextNode
from typer.testing import CliRunner

from llama_index_twostage.cli import app
from llama_index_twostage.errors import ConfigurationError, DocumentError
from llama_index_twostage.pipeline import TwoStagePipeline

pytestmark = pytest.mark.integration

GUIDE = """# Volcanoes

A volcano erupts when magma rises through the crust.

## Lava

Lava is molten rock that reaches the surface and cools into basalt.

## Ash

Volcanic ash is made of tiny fragments of rock and glass.
"""


class WordCount(BaseExtractor):
    """A metadata extractor that needs no LLM: the number of words of each chunk."""

    async def aextract(self, nodes: Sequence[BaseNode]) -> list[dict[str, Any]]:
        return [{"words": len(node.get_content().split())} for node in nodes]


@pytest.fixture
def pipeline(cheap_settings, hash_embedding):
    with TwoStagePipeline(cheap_settings(stage1_mode="dense"), embed_model=hash_embedding) as built:
        yield built


def records(pipeline) -> dict[str, tuple[str, dict]]:
    """chunk id -> (text, metadata) as stored."""
    result = pipeline.store.open_collection().get(include=["documents", "metadatas"])
    return {
        node_id: (text, meta) for node_id, text, meta in zip(result["ids"], result["documents"], result["metadatas"])
    }


def test_markdown_sections_with_an_extractor_are_idempotent_and_an_edit_re_embeds_one(pipeline, hash_embedding):
    chain = [MarkdownNodeParser(), WordCount()]
    documents = [Document(id_="guide.md", text=GUIDE, metadata={"topic": "geology"})]
    first = pipeline.ingest(documents, transformations=chain)
    assert (first.chunks, first.added) == (3, 3)
    held = records(pipeline)
    paths = sorted(meta["header_path"] for _, meta in held.values())
    assert paths == ["/", "/Volcanoes/", "/Volcanoes/"]
    for text, meta in held.values():
        assert meta["words"] == len(text.split()) and meta["topic"] == "geology"
    assert documents[0].metadata == {"topic": "geology"}  # the extractor wrote on copies

    embedded = len(hash_embedding.embedded)
    again = pipeline.ingest(documents, transformations=[MarkdownNodeParser(), WordCount()])
    assert (again.added, again.unchanged_documents, len(hash_embedding.embedded)) == (0, 1, embedded)

    edited = [
        Document(id_="guide.md", text=GUIDE.replace("tiny fragments", "small fragments"), metadata={"topic": "geology"})
    ]
    third = pipeline.ingest(edited, transformations=chain)
    assert (third.added, third.removed_stale, third.stored_total) == (1, 1, 3)
    (new_text,) = hash_embedding.embedded[embedded:]
    assert "small fragments" in new_text

    results = pipeline.retriever().retrieve("volcanic ash fragments")
    assert all(result.node.metadata["words"] > 0 for result in results)


def test_a_changed_chain_re_splits(pipeline):
    documents = [Document(id_="guide.md", text=GUIDE)]
    pipeline.ingest(documents, transformations=[MarkdownNodeParser()])
    other = pipeline.ingest(documents, transformations=[SentenceSplitter(chunk_size=512, chunk_overlap=0)])
    assert (other.unchanged_documents, other.replaced_documents, other.stored_total) == (0, 1, 1)


def test_parent_and_child_links_are_stored_and_come_back(pipeline):
    parser = HierarchicalNodeParser.from_defaults(chunk_sizes=[128, 32], chunk_overlap=0)
    text = " ".join(f"Sentence {i} tells one small fact about the rock cycle." for i in range(30))
    report = pipeline.ingest([Document(id_="rocks", text=text)], transformations=[parser])
    held = records(pipeline)
    assert report.stored_total == len(held) > 2
    children = 0
    for result in pipeline.retriever(recall_k=len(held)).retrieve("small fact about rocks"):
        node = result.node
        assert node.ref_doc_id == "rocks"
        if node.parent_node is not None:
            children += 1
            parent_text, _ = held[node.parent_node.node_id]  # the link points at a stored chunk ...
            assert node.get_content() in parent_text  # ... that holds this one
        for child in node.child_nodes or []:
            assert held[child.node_id][0] in node.get_content()
    assert children > 0
    assert pipeline.ingest([Document(id_="rocks", text=text)], transformations=[parser]).added == 0


def test_nodes_parsed_elsewhere_ingest_idempotently_and_stay_as_given(pipeline):
    documents = [Document(id_="guide.md", text=GUIDE)]
    nodes = SentenceSplitter(chunk_size=32, chunk_overlap=0).get_nodes_from_documents(documents)
    ids = [node.node_id for node in nodes]
    first = pipeline.ingest_nodes(nodes)
    assert first.added == len({node.text for node in nodes}) and [node.node_id for node in nodes] == ids
    reparsed = SentenceSplitter(chunk_size=32, chunk_overlap=0).get_nodes_from_documents(documents)  # new random ids
    assert pipeline.ingest_nodes(reparsed).added == 0
    assert set(records(pipeline)).isdisjoint(ids)  # stored under ids from source and content
    with pytest.raises(DocumentError, match="'orphan' has no source document"):
        pipeline.ingest_nodes([TextNode(id_="orphan", text="no source")])


def test_chains_chroma_cannot_store_or_that_embed_are_refused_up_front(pipeline, hash_embedding):
    class Nested(BaseExtractor):
        async def aextract(self, nodes):
            return [{"tags": ["a", "b"]} for _ in nodes]

    with pytest.raises(DocumentError, match="'guide.md'.*metadata key 'tags' is a list"):
        pipeline.ingest([Document(id_="guide.md", text=GUIDE)], transformations=[MarkdownNodeParser(), Nested()])
    with pytest.raises(ConfigurationError, match="embed_model"):
        pipeline.ingest([Document(id_="guide.md", text=GUIDE)], transformations=[MarkdownNodeParser(), hash_embedding])
    assert records(pipeline) == {}  # checked before anything was written


def test_the_semantic_preset_splits_where_meaning_changes_and_re_runs_add_nothing(cheap_settings, hash_embedding):
    settings = cheap_settings(splitter="semantic")
    text = " ".join(f"Sentence {i} is about {topic}." for i, topic in enumerate(["lava"] * 4 + ["bread"] * 4))
    with TwoStagePipeline(settings, embed_model=hash_embedding) as pipeline:
        first = pipeline.ingest([Document(id_="mixed", text=text)])
        assert first.added == first.chunks >= 1
        chunks = [chunk for chunk, _ in records(pipeline).values()]
        assert all(sum(f"Sentence {i} " in chunk for chunk in chunks) == 1 for i in range(8))  # each once
        assert pipeline.ingest([Document(id_="mixed", text=text)]).added == 0


def test_an_unknown_code_language_is_one_clear_error(cheap_settings, hash_embedding):
    with TwoStagePipeline(cheap_settings(splitter="code:klingon"), embed_model=hash_embedding) as pipeline:
        with pytest.raises(ConfigurationError, match="splitter 'code:klingon': .*klingon.*code:python"):
            pipeline.ingest([Document(id_="a.kl", text="Qapla'")])


def test_cli_splitter_presets_flag_and_toml(tmp_path, twostage_env, embed_model_dir):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text(GUIDE)
    (folder / "rocks.py").write_text("def lava():\n    return 'basalt'\n\n\nclass Ash:\n    size = 'tiny'\n")
    twostage_env(persist_dir=tmp_path / "chroma", collection="presets", embed_model=embed_model_dir)
    config = tmp_path / "settings.toml"
    config.write_text('splitter = "markdown"\n')
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(folder), "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("2 documents -> 4 chunks: 4 added")  # 3 sections + the code file

    result = runner.invoke(app, ["ingest", str(folder / "rocks.py"), "--splitter", "code:python"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["ingest", str(folder), "--splitter", "paragraphs"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: splitter: Value error, unknown splitter 'paragraphs': choose sentence, markdown, semantic or "
        "code:LANG (e.g. code:python)"
    ]
