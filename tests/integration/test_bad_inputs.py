"""Every bad input ends in a clear error or a logged warning, never in silent nonsense."""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path

import pytest
from llama_index.core import Document
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from llama_index_twostage.errors import (
    ChromaUnavailableError,
    CollectionMismatchError,
    CollectionNotFoundError,
    EmptyQueryError,
    ModelLoadError,
)
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.pipeline import TwoStagePipeline, ingest_documents
from llama_index_twostage.stage2.scorers import TokenWindow
from llama_index_twostage.store import CollectionContract

pytestmark = pytest.mark.integration

LONG_TEXT = " ".join(f"protein{i} binds receptor{i} in cell{i}" for i in range(150))  # ~750+ tokens


@pytest.fixture(scope="module")
def two_stage(ingested):
    return ingested.pipeline.two_stage_retriever()


@pytest.fixture(scope="module")
def small_collection(settings_for, scifact, pipeline_for):
    """Five SciFact documents (a few chunks) in memory."""
    pipeline = pipeline_for(settings_for("memory", recall_k=30, top_k=3))
    pipeline.ingest(list(scifact.corpus.values())[:5])
    return pipeline


# --- queries ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_empty_query_sync(two_stage, query):
    with pytest.raises(EmptyQueryError):
        two_stage.retrieve(query)
    with pytest.raises(EmptyQueryError):
        two_stage.recall.retrieve(QueryBundle(query))
    with pytest.raises(EmptyQueryError):
        two_stage.rerank.postprocess_nodes([], query_str=query)


@pytest.mark.parametrize("query", ["", "   \n\t"])
async def test_empty_query_async(two_stage, query):
    with pytest.raises(EmptyQueryError):
        await two_stage.aretrieve(query)
    with pytest.raises(EmptyQueryError):
        await two_stage.recall.aretrieve(query)
    with pytest.raises(EmptyQueryError):
        await two_stage.rerank.apostprocess_nodes([], query_str=query)


def test_query_longer_than_embedding_window_is_reported(ingested, caplog):
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage"):
        results = ingested.pipeline.retriever(recall_k=5).retrieve(LONG_TEXT)
    assert any("the embedding model reads only the first 256" in r.getMessage() for r in caplog.records)
    assert all(stage_info(r)["query_truncated"] is True for r in results)


def test_long_pairs_are_counted_and_reported(ingested, caplog):
    nodes = [
        NodeWithScore(node=TextNode(id_="long1", text=LONG_TEXT), score=0.9),
        NodeWithScore(node=TextNode(id_="short", text="Insulin regulates glucose."), score=0.8),
        NodeWithScore(node=TextNode(id_="long2", text=LONG_TEXT + " extra"), score=0.7),
    ]
    reranker = ingested.pipeline.reranker()  # top_k 5: every candidate comes back
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage"):
        results = reranker.postprocess_nodes(nodes, query_str="what regulates glucose?")
    assert {stage_info(r)["pairs_truncated"] for r in results} == {2}
    assert any("2 of 3 (query, candidate) pairs exceed" in r.getMessage() for r in caplog.records)


def test_non_text_candidates_are_skipped_and_reported(ingested, pipeline_for, some_queries, caplog):
    candidates = ingested.pipeline.retriever(recall_k=5).retrieve(some_queries[0])
    extras = [
        NodeWithScore(node=TextNode(id_="blank", text="  "), score=0.5),
        NodeWithScore(node=ImageNode(id_="picture", image="aGVsbG8="), score=0.4),
    ]
    reranker = pipeline_for(ingested.settings.model_copy(update={"top_k": 10})).reranker()
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage"):
        results = reranker.postprocess_nodes([extras[0], *candidates, extras[1]], query_str=some_queries[0])
    assert len(results) == 5
    assert {r.node.node_id for r in results} == {c.node.node_id for c in candidates}
    assert all(stage_info(r)["skipped_non_text"] == 2 for r in results)
    assert all(stage_info(r)["pairs_scored"] == 5 for r in results)
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 2 candidates without text" in m and "blank" in m and "picture" in m for m in messages)


# --- collections ------------------------------------------------------------------------------------------------


def test_recall_k_above_collection_size_returns_all_with_a_warning(small_collection, caplog):
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage"):
        results = small_collection.retriever().retrieve("cells")
    count = small_collection.store.open_collection().count()
    assert 0 < count < 30
    assert len(results) == count
    assert any(
        f"recall_k=30 but collection {small_collection.settings.collection!r} holds only {count} nodes"
        in r.getMessage()
        for r in caplog.records
    )


def test_records_without_text_that_take_the_nearest_slots_are_dropped_with_a_warning(
    cheap_settings, pipeline_for, hash_embedding, caplog
):
    """Records another tool wrote without text, nearest to the query: dropped (nothing to rank), never silently."""
    settings = cheap_settings("memory", recall_k=3, top_k=2, stage1_mode="dense")
    pipeline = pipeline_for(settings, embed_model=hash_embedding)
    pipeline.ingest([Document(id_=f"d{i}", text=f"a note on bees, number {i}") for i in range(4)])
    nearest = hash_embedding.get_query_embedding("bees")
    pipeline.store.open_collection().add(ids=["bare-1", "bare-2"], embeddings=[nearest, nearest])
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage"):
        results = pipeline.retriever().retrieve("bees")
    assert len(results) == 1 and stage_info(results[0])["dropped_without_text"] == 2
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"2 of the 3 nearest records in collection {settings.collection!r} have no text"
    ]


@pytest.mark.parametrize("mode", ["embedded", "memory"])
def test_missing_collection_is_named(settings_for, pipeline_for, mode):
    settings = settings_for(mode, "no-such-collection")
    with pytest.raises(CollectionNotFoundError) as excinfo:
        pipeline_for(settings).retriever().retrieve("anything")
    assert "'no-such-collection' does not exist" in str(excinfo.value)
    assert "twostage ingest" in str(excinfo.value)


def test_empty_collection_is_named(settings_for, pipeline_for, embed_model_dir):
    settings = settings_for("memory")
    pipeline = pipeline_for(settings)
    pipeline.store.create_or_open_collection(CollectionContract(embed_model_dir, 384))
    with pytest.raises(CollectionNotFoundError) as excinfo:
        pipeline.retriever().retrieve("anything")
    assert f"{settings.collection!r} is empty" in str(excinfo.value)


def test_embedding_model_mismatch_names_both(settings_for, pipeline_for, scifact, embed_model_dir):
    settings = settings_for("memory")
    ingest_documents(list(scifact.corpus.values())[:3], settings, embed_model=MockEmbedding(embed_dim=384))
    with pytest.raises(CollectionMismatchError) as excinfo:
        pipeline_for(settings).retriever().retrieve("anything")
    assert "'unknown'" in str(excinfo.value)  # MockEmbedding's model_name
    assert embed_model_dir in str(excinfo.value)


def test_dimension_mismatch_names_both(ingested, pipeline_for):
    reader = pipeline_for(ingested.settings, embed_model=MockEmbedding(embed_dim=8)).retriever()
    with pytest.raises(CollectionMismatchError) as excinfo:
        reader.retrieve("anything")
    assert "all-MiniLM-L6-v2" in str(excinfo.value) and "'unknown'" in str(excinfo.value)


def test_dimension_mismatch_with_same_model_name_names_both_dimensions(ingested, pipeline_for):
    same_name = MockEmbedding(embed_dim=8, model_name=ingested.settings.embed_model)
    with pytest.raises(CollectionMismatchError) as excinfo:
        pipeline_for(ingested.settings, embed_model=same_name).retriever().retrieve("anything")
    assert "384-dimensional" in str(excinfo.value) and "produces 8" in str(excinfo.value)


def test_ingesting_with_another_model_is_refused(ingested, scifact):
    with pytest.raises(CollectionMismatchError):
        ingest_documents(list(scifact.corpus.values())[:1], ingested.settings, embed_model=MockEmbedding(embed_dim=8))


# --- the Chroma server ------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


@pytest.fixture
def silent_server():
    """A socket that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


def test_unreachable_server_is_named(settings_for, pipeline_for):
    port = closed_port()
    settings = settings_for("server", chroma_host="127.0.0.1", chroma_port=port, chroma_timeout_s=2)
    with pytest.raises(ChromaUnavailableError) as excinfo:
        pipeline_for(settings).retriever().retrieve("anything")
    assert f"127.0.0.1:{port}" in str(excinfo.value)
    assert "chroma run" in str(excinfo.value)


def test_unreachable_server_on_ingest(settings_for, pipeline_for, scifact):
    settings = settings_for("server", chroma_host="127.0.0.1", chroma_port=closed_port(), chroma_timeout_s=2)
    with pytest.raises(ChromaUnavailableError):
        pipeline_for(settings).ingest(list(scifact.corpus.values())[:1])


@pytest.mark.timeout(30)
def test_silent_server_times_out(settings_for, pipeline_for, silent_server):
    settings = settings_for("server", chroma_host="127.0.0.1", chroma_port=silent_server, chroma_timeout_s=1)
    with pytest.raises(ChromaUnavailableError) as excinfo:
        pipeline_for(settings).retriever().retrieve("anything")
    assert f"127.0.0.1:{silent_server}" in str(excinfo.value)


@pytest.mark.timeout(30)
async def test_silent_server_times_out_async(settings_for, pipeline_for, silent_server):
    settings = settings_for("server", chroma_host="127.0.0.1", chroma_port=silent_server, chroma_timeout_s=1)
    with pytest.raises(ChromaUnavailableError):
        await pipeline_for(settings).retriever().aretrieve("anything")


# --- models -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_unloadable_embedding_model_is_named(settings_for, pipeline_for, tmp_path, ingested):
    broken = tmp_path / "broken-embedder"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    settings = settings_for("embedded", ingested.settings.collection, embed_model=str(broken))
    with pytest.raises(ModelLoadError) as excinfo:
        pipeline_for(settings).retriever().retrieve("anything")
    assert "embed_model" in str(excinfo.value) and str(broken) in str(excinfo.value)


@pytest.mark.timeout(120)
def test_unloadable_cross_encoder_is_named(settings_for, pipeline_for, tmp_path):
    broken = tmp_path / "broken-reranker"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as excinfo:
        pipeline_for(settings_for("memory", rerank_model=str(broken))).reranker()  # loaded when built
    assert "rerank_model" in str(excinfo.value) and str(broken) in str(excinfo.value)


def with_remote_code(model_dir: str, folder: Path, auto_class: str, marker: Path) -> str:
    """``model_dir`` (linked, not copied) whose config names custom code, as a hub repository with remote code does;
    the code, if anything runs it, writes ``marker``."""
    folder.mkdir()
    for entry in Path(model_dir).iterdir():
        if entry.name != "config.json":
            (folder / entry.name).symlink_to(entry)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config["auto_map"] = {auto_class: "custom_model.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom_model.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return str(folder)


@pytest.mark.timeout(120)
def test_remote_code_is_not_run_by_default(settings_for, embed_model_dir, rerank_model_dir, tmp_path):
    """LlamaIndex's stock SentenceTransformerRerank trusts remote code; here neither model runs the code its
    repository ships unless trust_remote_code is set."""
    marker = tmp_path / "remote-code-ran"
    settings = settings_for(
        "memory",
        embed_model=with_remote_code(embed_model_dir, tmp_path / "embed", "AutoModel", marker),
        rerank_model=with_remote_code(
            rerank_model_dir, tmp_path / "rerank", "AutoModelForSequenceClassification", marker
        ),
    )
    assert settings.trust_remote_code is False
    with TwoStagePipeline(settings) as pipeline:  # a pool of its own: both models load here
        assert len(pipeline.embed_model.get_text_embedding("bees")) == 384
        assert len(pipeline.reranker().scorer.score("bees", ["Bees make honey."])) == 1
    assert not marker.exists()


@pytest.mark.parametrize("window", [128, 256, 512])
def test_truncation_count_equals_tokenizing_each_pair(ingested, pipeline_for, scifact, window):
    """Counting from cached per-text token counts gives exactly what tokenizing every (query, text) pair gives."""
    texts = [f"{document.text} {document.metadata.get('title', '')}" for document in scifact.corpus.values()][:60]
    query = next(iter(scifact.queries.values()))
    scorer = pipeline_for(ingested.settings.model_copy(update={"max_length": window})).reranker().scorer
    model = scorer.cross_encoder
    pairs = model.tokenizer([query] * len(texts), texts, truncation=False, verbose=False)["input_ids"]
    expected = sum(len(ids) > model.max_seq_length for ids in pairs)
    if window < 512:
        assert 0 < expected < len(texts)  # the window cuts through the candidates: both sides of the boundary
    assert scorer.window.count_truncated(query, texts) == expected
    assert scorer.window.count_truncated(query, texts) == expected  # the second time from the cache


def test_repeated_texts_are_not_tokenized_again_for_counting(scifact, rerank_model_dir):
    """A window keeps each text's token count: candidates seen with one query are looked up, not tokenized, with the
    next, and the count is what a fresh window computes."""
    from transformers import AutoTokenizer

    texts = [document.text for document in scifact.corpus.values()][:20]
    tokenizer = AutoTokenizer.from_pretrained(rerank_model_dir)
    window = TokenWindow(tokenizer, 256)
    window.count_truncated("first query", texts)
    assert (window.token_counts.stats().hits, window.token_counts.stats().misses) == (0, 20)
    again = window.count_truncated("another query about the same candidates", texts)
    assert (window.token_counts.stats().hits, window.token_counts.stats().misses) == (20, 20)
    assert again == TokenWindow(tokenizer, 256).count_truncated("another query about the same candidates", texts) > 0


def test_a_lexical_match_whose_record_lost_its_text_is_dropped_with_a_warning(
    cheap_settings, pipeline_for, hash_embedding, caplog
):
    """Another tool rewrote a record without its text after this package indexed it: BM25 still matches its old
    text, Chroma has nothing to rank or read. Dropped, never silently."""
    settings = cheap_settings("memory", recall_k=2, top_k=2, stage1_mode="hybrid")
    pipeline = pipeline_for(settings, embed_model=hash_embedding)
    pipeline.ingest([Document(id_=f"d{i}", text=f"a note on bees, number {i}") for i in range(6)])
    pipeline.ingest([Document(id_="rare", text="zyxomorphic lattice")])
    collection = pipeline.store.open_collection()
    rewritten = collection.get(where={"ref_doc_id": "rare"}, include=["embeddings", "metadatas"])
    collection.delete(ids=rewritten["ids"])
    collection.add(ids=rewritten["ids"], embeddings=rewritten["embeddings"], metadatas=rewritten["metadatas"])
    with caplog.at_level(logging.WARNING, logger="llama_index_twostage"):
        results = pipeline.retriever().retrieve("zyxomorphic")
    assert "rare" not in {result.node.ref_doc_id for result in results}
    assert [r.getMessage().split(" (")[0] for r in caplog.records if "lexical index" in r.getMessage()] == [
        f"1 of the 1 records that the lexical index matched in collection {settings.collection!r} have no text in "
        "Chroma"
    ]
