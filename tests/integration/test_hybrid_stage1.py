"""Hybrid stage 1 on real tantivy and real Chroma (embedded and server): the two indexes stay in step through
ingestion, replacement, deletion and a crash between the writes; filters hold on both sides; fused candidates carry
each side's rank and score; concurrent queries equal sequential ones; a missing index is named, not silently empty."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document
from llama_index.core.vector_stores.types import ExactMatchFilter, MetadataFilters
from support import HashEmbedding
from typer.testing import CliRunner

from llama_index_twostage.cli import app
from llama_index_twostage.errors import LexicalIndexError
from llama_index_twostage.nodes import stage_info
from llama_index_twostage.pipeline import TwoStagePipeline
from llama_index_twostage.stage1 import HybridRecallRetriever
from llama_index_twostage.stage1.hybrid import NO_TERMS
from llama_index_twostage.store import LexicalRecord, TantivyIndex, find_drift
from llama_index_twostage.store.lexical import LexicalIndex
from llama_index_twostage.store.reconcile import chroma_versions

pytestmark = pytest.mark.integration

TOPICS = ["vitamin", "fracture", "insulin", "tumour", "antibody", "neuron", "statin", "malaria"]


def article(i: int, version: int = 0) -> Document:
    """A document of a few chunks with a distinctive rare word (``code<i>``) and a ``group`` metadata value."""
    topic = TOPICS[i % len(TOPICS)]
    paragraphs = [
        f"Report {i} version {version} studies {topic} in cohort {i}; marker code{i} appears here, part {part}."
        for part in range(3 + version)
    ]
    return Document(id_=f"doc-{i}", text="\n\n".join(paragraphs), metadata={"group": "even" if i % 2 == 0 else "odd"})


def corpus(n: int = 12) -> list[Document]:
    return [article(i) for i in range(n)]


@pytest.fixture
def settings(cheap_settings, tmp_path):
    """Embedded Chroma (so the lexical index lives on disk beside it) on the cheap hash embedding."""
    return cheap_settings("embedded", persist_dir=tmp_path / "chroma", chunk_size=32, chunk_overlap=0, recall_k=10)


@pytest.fixture
def pipeline(settings, hash_embedding):
    with TwoStagePipeline(settings, embed_model=hash_embedding) as built:
        yield built


def in_step(pipeline: TwoStagePipeline) -> bool:
    collection = pipeline.store.open_collection()
    truth, _ = chroma_versions(pipeline.store, collection, 1000)
    return pipeline.lexical.versions() == truth and find_drift(pipeline.store, collection, pipeline.lexical, 7).ok


def test_both_indexes_hold_the_same_records_through_ingest_replace_and_delete(pipeline):
    pipeline.ingest(corpus())
    assert in_step(pipeline) and pipeline.lexical.count() == 12 * 3  # three chunks an article
    report = pipeline.ingest([article(0, version=2), *corpus()[1:]])  # doc-0: its 3 chunks replaced by 5 new ones
    assert (report.replaced_documents, report.removed_stale, report.added) == (1, 3, 5)
    assert in_step(pipeline) and report.lexical_repaired == 0 and pipeline.lexical.count() == 11 * 3 + 5
    hits = pipeline.lexical.search("version 0 code0", limit=50).ids
    assert hits and all(
        stage_id in chroma_versions(pipeline.store, pipeline.store.open_collection(), 100)[0] for stage_id in hits
    )


class CrashingIndex:
    """A lexical index whose writes fail after ``allowed`` of them: a process dying between the two writes."""

    def __init__(self, inner: LexicalIndex, allowed: int) -> None:
        self.inner, self.allowed = inner, allowed

    def add(self, records):
        if self.allowed <= 0:
            raise KeyboardInterrupt("killed between the Chroma write and the lexical write")
        self.allowed -= 1
        self.inner.add(records)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_crash_between_the_writes_is_repaired_by_the_next_run(settings, hash_embedding, tmp_path):
    lexical = TantivyIndex(tmp_path / "lexical")
    settings = settings.model_copy(update={"upsert_batch_size": 5})
    with TwoStagePipeline(settings, embed_model=hash_embedding, lexical=CrashingIndex(lexical, 2)) as crashing:
        with pytest.raises(KeyboardInterrupt):
            crashing.ingest(corpus())
        written = crashing.store.open_collection().count()
    assert 0 < lexical.count() < written  # Chroma got ahead of the lexical index
    with TwoStagePipeline(settings, embed_model=hash_embedding, lexical=lexical) as rerun:
        report = rerun.ingest(corpus())
        assert report.lexical_repaired == written - 10  # what the crash left out is copied from Chroma
        assert in_step(rerun)


def test_a_relabel_left_half_done_is_repaired(pipeline):
    """Chroma recorded a new doc hash, the lexical index did not: the counts agree, the versions do not."""
    pipeline.ingest(corpus())
    collection = pipeline.store.open_collection()
    some = collection.get(limit=3, include=["documents", "metadatas"])
    pipeline.lexical.add([LexicalRecord(record_id, "stale text", "old-hash") for record_id in some["ids"]])
    drift = find_drift(pipeline.store, collection, pipeline.lexical, 1000)
    assert sorted(drift.changed) == sorted(some["ids"]) and not drift.missing and not drift.extra
    assert pipeline.verify().lexical.changed == drift.changed  # the feed cannot know: verify names it
    assert pipeline.verify(repair_lexical=True).ok
    assert in_step(pipeline)


def test_counts_that_differ_are_named_on_open_and_repaired_by_verify(pipeline, settings, hash_embedding, caplog):
    """Drift the feed cannot explain (writes behind its back): a query answers without writing and says what
    repairs it; ``verify --repair`` does."""
    pipeline.ingest(corpus())
    lost = pipeline.lexical.search("code3", limit=5).ids
    pipeline.lexical.delete(lost)
    pipeline.lexical.add([LexicalRecord("ghost", "code3 code3 code3", "x")])  # a record Chroma never held
    with TwoStagePipeline(settings, embed_model=hash_embedding) as reopened:
        nodes = reopened.retriever().retrieve("code3")
        assert "ghost" not in {scored.node.node_id for scored in nodes}
        assert "verify --repair" in caplog.text and not in_step(reopened)
        assert reopened.verify(repair_lexical=True).ok
        nodes = reopened.retriever().retrieve("code3")
        assert set(lost) <= {scored.node.node_id for scored in nodes if "lexical_rank" in stage_info(scored)}
        assert in_step(reopened)


def test_an_empty_lexical_index_beside_a_full_collection_says_reindex(pipeline, settings, hash_embedding, tmp_path):
    pipeline.ingest(corpus())
    new_host = settings.model_copy(update={"lexical_dir": tmp_path / "new-host"})
    with TwoStagePipeline(new_host, embed_model=hash_embedding) as reopened:
        with pytest.raises(LexicalIndexError, match="twostage reindex"):
            reopened.retriever().retrieve("code3")
        assert reopened.retriever(stage1_mode="dense").retrieve("code3")  # dense needs no lexical index
        assert reopened.reindex() == reopened.store.open_collection().count()
        assert in_step(reopened)
        assert reopened.retriever().retrieve("code3")


def test_a_long_lived_retriever_follows_another_host_within_lexical_refresh_s(
    pipeline, settings, hash_embedding, tmp_path
):
    """Hosts with their own lexical_dir on one store: a retriever refreshing hourly does not yet see another host's
    replacement; one refreshing before every query (0) does, on its next query."""
    pipeline.ingest(corpus())
    hourly = settings.model_copy(update={"lexical_dir": tmp_path / "host-b", "lexical_refresh_s": 3600})
    every_query = settings.model_copy(update={"lexical_dir": tmp_path / "host-c", "lexical_refresh_s": 0})
    with (
        TwoStagePipeline(hourly, embed_model=hash_embedding) as slow,
        TwoStagePipeline(every_query, embed_model=hash_embedding) as fast,
    ):
        slow.reindex()
        fast.reindex()
        lazy, eager = slow.retriever(stage1_mode="lexical"), fast.retriever(stage1_mode="lexical")
        assert lazy.retrieve("code3") and eager.retrieve("code3")
        pipeline.ingest([Document(id_="doc-3", text="A rewritten report on zebrafish.")])
        assert eager.retrieve("zebrafish")[0].node.ref_doc_id == "doc-3"
        assert "doc-3" not in {scored.node.ref_doc_id for scored in lazy.retrieve("zebrafish")}


def test_reindex_rebuilds_what_ingestion_built(pipeline, settings):
    pipeline.ingest(corpus())
    before = pipeline.lexical.versions()
    scores = pipeline.lexical.search("cohort code5 insulin", limit=20)
    pipeline.reindex()
    assert pipeline.lexical.versions() == before
    again = pipeline.lexical.search("cohort code5 insulin", limit=20)
    assert (again.ids, again.scores) == (scores.ids, scores.scores)  # the same text indexed from Chroma


def test_verify_reports_drift_and_repair_fixes_it(pipeline, settings, twostage_env):
    pipeline.ingest(corpus())
    pipeline.lexical.delete(pipeline.lexical.search("code1", limit=2).ids)
    twostage_env(persist_dir=settings.persist_dir, collection=settings.collection, embed_model=settings.embed_model)
    checked = CliRunner().invoke(app, ["verify"])
    assert checked.exit_code == 1
    assert "2 records missing from the lexical index" in checked.output and "--repair" in checked.output
    repaired = CliRunner().invoke(app, ["verify", "--repair"])
    assert repaired.exit_code == 0 and "ok: no problems found" in repaired.output
    rebuilt = CliRunner().invoke(app, ["reindex"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"{pipeline.store.open_collection().count()} records indexed" in rebuilt.output


def side_ids(nodes, side: str) -> list[str]:
    found = [
        (stage_info(scored)[f"{side}_rank"], scored.node.node_id)
        for scored in nodes
        if f"{side}_rank" in stage_info(scored)
    ]
    return [node_id for _, node_id in sorted(found)]


def test_fused_candidates_carry_each_sides_rank_and_score(pipeline):
    pipeline.ingest(corpus())
    hybrid = pipeline.retriever()
    assert isinstance(hybrid, HybridRecallRetriever)
    nodes = hybrid.retrieve("marker code5 statin")
    dense = pipeline.retriever(stage1_mode="dense").retrieve("marker code5 statin")
    lexical = pipeline.retriever(stage1_mode="lexical").retrieve("marker code5 statin")
    assert len(nodes) == 10
    assert [stage_info(scored)["stage1_rank"] for scored in nodes] == list(range(1, 11))
    for scored in nodes:
        info = stage_info(scored)
        expected = sum(1 / (60 + info[f"{side}_rank"]) for side in ("dense", "lexical") if f"{side}_rank" in info)
        assert info["stage1_score"] == pytest.approx(expected) == scored.score
        assert info["stage1_mode"] == "hybrid"
    by_id = {scored.node.node_id: stage_info(scored) for scored in nodes}
    for scored in dense:
        if scored.node.node_id in by_id and "dense_rank" in by_id[scored.node.node_id]:
            assert by_id[scored.node.node_id]["dense_rank"] == stage_info(scored)["stage1_rank"]
            assert by_id[scored.node.node_id]["dense_score"] == pytest.approx(scored.score)
    assert [stage_info(scored)["lexical_score"] for scored in lexical] == [scored.score for scored in lexical]
    assert lexical[0].node.node_id in side_ids(nodes, "lexical")[:1]


def test_weights_are_honoured(pipeline, settings, hash_embedding):
    pipeline.ingest(corpus())
    query = "marker code5 statin cohort"
    dense_order = [scored.node.node_id for scored in pipeline.retriever(stage1_mode="dense").retrieve(query)]
    lexical_order = [scored.node.node_id for scored in pipeline.retriever(stage1_mode="lexical").retrieve(query)]
    for weights, expected in (((1.0, 0.0), dense_order), ((0.0, 1.0), lexical_order)):
        tilted = settings.model_copy(update={"dense_weight": weights[0], "lexical_weight": weights[1]})
        with TwoStagePipeline(tilted, embed_model=hash_embedding) as weighted:
            fused = [scored.node.node_id for scored in weighted.retriever().retrieve(query)]
        assert fused[: len(expected)] == expected[: len(fused)]


def test_filters_hold_on_both_sides_and_deleted_chunks_never_appear(pipeline):
    pipeline.ingest(corpus())
    odd = MetadataFilters(filters=[ExactMatchFilter(key="group", value="odd")])
    nodes = pipeline.retriever(filters=odd).retrieve("code4 code6 code3 marker")  # lexical favours even docs
    assert nodes and all(scored.node.metadata["group"] == "odd" for scored in nodes)
    assert any("lexical_rank" in stage_info(scored) for scored in nodes)
    assert len(nodes) == 10  # filtered-out lexical hits are replaced by further ones, not left as gaps
    collection = pipeline.store.open_collection()
    gone = pipeline.lexical.search("code7", limit=1).ids
    collection.delete(ids=gone)  # deleted behind the lexical index's back
    after = pipeline.retriever().retrieve("code7")
    assert gone[0] not in {scored.node.node_id for scored in after}


@pytest.mark.parametrize("query", ['code3 AND "marker', "code3 OR (cohort", "code3* field:x ~2 ^3 )", "id:doc-3"])
def test_query_syntax_is_text(pipeline, query):
    pipeline.ingest(corpus())
    nodes = pipeline.retriever().retrieve(query)
    assert len(nodes) == 10 and all(stage_info(scored)["stage1_mode"] == "hybrid" for scored in nodes)


def test_a_query_without_lexical_terms_falls_back_to_dense(pipeline):
    pipeline.ingest(corpus())
    for mode in ("hybrid", "lexical"):
        nodes = pipeline.retriever(stage1_mode=mode).retrieve("the of and ?")
        assert len(nodes) == 10
        assert {stage_info(scored)["stage1_fallback"] for scored in nodes} == {NO_TERMS}
        assert {stage_info(scored)["stage1_mode"] for scored in nodes} == {"dense"}


def ranked(nodes) -> list[tuple[str, float, int | None, int | None]]:
    return [
        (
            scored.node.node_id,
            round(scored.score, 9),
            stage_info(scored).get("dense_rank"),
            stage_info(scored).get("lexical_rank"),
        )
        for scored in nodes
    ]


async def test_async_equals_sync_and_32_concurrent_queries_equal_sequential(pipeline):
    pipeline.ingest(corpus())
    retriever = pipeline.retriever()
    queries = [f"code{i % 12} {TOPICS[i % 8]} cohort" for i in range(32)]
    sequential = [ranked(retriever.retrieve(query)) for query in queries]
    concurrent = await asyncio.gather(*(retriever.aretrieve(query) for query in queries))
    assert [ranked(nodes) for nodes in concurrent] == sequential


async def test_on_a_chroma_server(chroma_server, cheap_settings, hash_embedding, tmp_path):
    """Server mode: the lexical index lives in a local folder per host; sync, async and 32 concurrent queries agree
    with each other, and a second host (another folder) is told to reindex, then answers the same."""
    host, port = chroma_server
    settings = cheap_settings(
        "server",
        chroma_host=host,
        chroma_port=port,
        chunk_size=32,
        chunk_overlap=0,
        recall_k=10,
        lexical_dir=tmp_path / "host-a",
    )
    queries = [f"code{i % 12} {TOPICS[i % 8]}" for i in range(32)]
    with TwoStagePipeline(settings, embed_model=hash_embedding) as pipeline:
        pipeline.ingest(corpus())
        assert str(tmp_path / "host-a") in pipeline.lexical.describe()
        retriever = pipeline.retriever()
        sequential = [ranked(retriever.retrieve(query)) for query in queries]
        concurrent = await asyncio.gather(*(retriever.aretrieve(query) for query in queries))
        assert [ranked(nodes) for nodes in concurrent] == sequential
    other_host = settings.model_copy(update={"lexical_dir": tmp_path / "host-b"})
    with TwoStagePipeline(other_host, embed_model=hash_embedding) as second:
        with pytest.raises(LexicalIndexError, match="reindex"):
            await second.retriever().aretrieve(queries[0])
        second.reindex()
        assert ranked(await second.retriever().aretrieve(queries[0])) == sequential[0]


CHINESE_NOTES = [
    Document(id_="vitc", text="维生素C是人体必需的营养素，长期缺乏会导致坏血病。"),
    Document(id_="vitd", text="维生素D帮助身体吸收钙质，缺乏时儿童容易患佝偻病。"),
    Document(id_="volcano", text="火山喷发时，岩浆从地壳深处涌出，形成熔岩和火山灰。"),
]


def test_lexical_language_reaches_the_pipelines_index_and_a_change_asks_for_reindex(cheap_settings, tmp_path):
    cjk = cheap_settings("embedded", persist_dir=tmp_path / "chroma", stage1_mode="lexical", lexical_language="cjk")
    with TwoStagePipeline(cjk, embed_model=HashEmbedding()) as pipeline:
        pipeline.ingest(CHINESE_NOTES)
        found = pipeline.retriever().retrieve("缺少哪种维生素会得坏血病？")
        assert found[0].node.ref_doc_id == "vitc" and stage_info(found[0])["lexical_rank"] == 1
    english = cjk.model_copy(update={"lexical_language": "english"})
    with TwoStagePipeline(english, embed_model=HashEmbedding()) as pipeline:
        with pytest.raises(LexicalIndexError, match="built for lexical_language 'cjk'.*`twostage reindex`"):
            pipeline.retriever().retrieve("坏血病")
        assert pipeline.reindex() == len(CHINESE_NOTES)  # rebuilt for english: a Chinese run is one word again
        assert pipeline.retriever().retrieve("坏血病") == []
