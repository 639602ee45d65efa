"""The lexical index (real tantivy) and reciprocal rank fusion: BM25 against a hand computation, user text never
parsed as query syntax, idempotent writes, and fusion that honours its weights."""

from __future__ import annotations

import math
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from llama_index_twostage.errors import LexicalIndexError
from llama_index_twostage.stage1 import HybridRecallRetriever
from llama_index_twostage.stage1.fusion import FusionConfig, reciprocal_rank_fusion
from llama_index_twostage.store.analysis import Analyser, cjk_bigrams
from llama_index_twostage.store.lexical import RECORD_FILE, LexicalHits, LexicalRecord, TantivyIndex

CORPUS = {
    "a": "Vitamin D supplementation reduces hip fractures in elderly women.",
    "b": "Fractures of the hip: a cohort study of falls and bone density.",
    "c": "Interleukin IL-6 signalling drives inflammation in rheumatoid arthritis.",
    "d": "BRCA1 mutations raise the risk of breast and ovarian cancer.",
    "e": "Vitamin supplementation trials: calcium, vitamin D and vitamin K compared.",
    "f": "Statins lower cholesterol; their effect on fractures is unclear.",
}


def bm25_by_hand(query: str, corpus: dict[str, str], k1: float = 1.2, b: float = 0.75) -> dict[str, float]:
    """Okapi BM25 as Lucene defines it, on the analyser's tokens: an independent reference for tantivy's scores."""
    analyzer = Analyser("english").analyzer
    documents = {doc_id: Counter(analyzer.analyze(text)) for doc_id, text in corpus.items()}
    lengths = {doc_id: sum(tokens.values()) for doc_id, tokens in documents.items()}
    average = sum(lengths.values()) / len(lengths)
    scores: dict[str, float] = {}
    for term, times in Counter(analyzer.analyze(query)).items():
        frequency = sum(term in tokens for tokens in documents.values())
        idf = math.log(1 + (len(documents) - frequency + 0.5) / (frequency + 0.5))
        for doc_id, tokens in documents.items():
            tf = tokens[term]
            if tf:
                norm = tf + k1 * (1 - b + b * lengths[doc_id] / average)
                scores[doc_id] = scores.get(doc_id, 0.0) + times * idf * tf * (k1 + 1) / norm
    return scores


@pytest.fixture
def index(tmp_path: Path) -> TantivyIndex:
    built = TantivyIndex(tmp_path / "lexical")
    built.add([LexicalRecord(doc_id, text, f"hash-{doc_id}") for doc_id, text in CORPUS.items()])
    yield built
    built.close()


@pytest.mark.parametrize("query", ["vitamin D fractures", "hip fractures hip", "IL-6 inflammation", "cancer risk"])
def test_bm25_scores_equal_a_hand_computation(index: TantivyIndex, query: str) -> None:
    expected = bm25_by_hand(query, CORPUS)
    hits = index.search(query, limit=10)
    assert hits.ids == sorted(expected, key=lambda doc_id: -expected[doc_id])
    assert hits.scores == pytest.approx([expected[doc_id] for doc_id in hits.ids], rel=1e-5)


@pytest.mark.parametrize(
    "query",
    [
        'text:vitamin AND "hip fractures',
        "vitamin OR fractures)",
        "(((vitamin* fractures~2",
        "vitamin^5 fractures NOT",
        "id:a doc_hash:hash-a vitamin fractures",
        "+vitamin -fractures [a TO z] {x} \\ / !",
    ],
)
def test_query_syntax_is_searched_as_text(index: TantivyIndex, query: str) -> None:
    """Operators, fields, quotes, wildcards, fuzziness, boosts and unbalanced brackets are characters, not syntax:
    the hits are those of the words alone, scored by hand."""
    hits = index.search(query, limit=10)
    expected = bm25_by_hand(query, CORPUS)
    assert hits.terms > 0
    assert set(hits.ids) == set(expected)
    assert hits.scores == pytest.approx([expected[doc_id] for doc_id in hits.ids], rel=1e-5)


@pytest.mark.parametrize("query", ["the of and", "?!", "   ", "AND OR NOT"])
def test_a_query_without_searchable_terms_says_so(index: TantivyIndex, query: str) -> None:
    hits = index.search(query, limit=10)
    assert (hits.ids, hits.terms) == ([], 0)


def test_writes_are_idempotent_and_deletes_exact(index: TantivyIndex) -> None:
    index.add([LexicalRecord("a", CORPUS["a"], "hash-a2"), LexicalRecord("a", CORPUS["a"], "hash-a2")])
    assert index.count() == len(CORPUS)
    assert index.versions()["a"] == "hash-a2"
    index.delete(["b", "no-such-id"])
    assert index.count() == len(CORPUS) - 1
    assert "b" not in index.search("hip fractures", limit=10).ids


def test_ids_with_punctuation_are_deleted_exactly(tmp_path: Path) -> None:
    with TantivyIndex(tmp_path / "ids") as index:
        ids = ["doc-1/chunk:2", "doc-1/chunk:20", "Ünïcode id with spaces"]
        index.add([LexicalRecord(record_id, "shared words here", "") for record_id in ids])
        index.delete([ids[0]])
        assert sorted(index.versions()) == sorted(ids[1:])


def test_the_index_persists_and_rebuilding_starts_empty_without_removing_files(index: TantivyIndex) -> None:
    path = index.path
    index.close()
    reopened = TantivyIndex(path)
    assert reopened.count() == len(CORPUS)
    with reopened.rebuilding() as fresh:
        assert fresh.count() == 0
        fresh.set_feed_mark(12.5)
    assert path.is_dir() and reopened.count() == 0 and reopened.feed_mark() == 12.5


def test_a_second_writer_gets_a_clear_error(index: TantivyIndex) -> None:
    """Another process's writer holds tantivy's lock (simulated by holding a writer open here)."""
    held = index.index.writer(15_000_000, 1)
    with pytest.raises(LexicalIndexError, match="being written by another process"):
        index.add([LexicalRecord("z", "vitamin", "")])
    held.rollback()
    held.wait_merging_threads()
    index.add([LexicalRecord("z", "vitamin", "")])
    assert "z" in index.versions()


def test_an_unusable_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(LexicalIndexError, match="a-file"):
        TantivyIndex(blocker / "lexical").count()


def test_in_memory_index(tmp_path: Path) -> None:
    index = TantivyIndex(None)
    index.add([LexicalRecord("x", "vitamin D", "")])
    assert index.search("vitamins", limit=5).ids == ["x"]  # stemmed
    assert "in-memory" in index.describe()


def test_fusion_by_hand() -> None:
    fused = reciprocal_rank_fusion({"dense": ["a", "b", "c"], "lexical": ["c", "d"]}, FusionConfig(rrf_k=60))
    expected = {"a": 1 / 61, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 62}
    assert [node_id for node_id, _ in fused] == ["c", "a", "b", "d"]  # b and d tie: dense (listed first) wins
    assert dict(fused) == pytest.approx(expected)


def test_fusion_honours_weights() -> None:
    rankings = {"dense": ["a", "b", "c"], "lexical": ["c", "b", "a"]}
    assert [i for i, _ in reciprocal_rank_fusion(rankings, FusionConfig(lexical_weight=0))] == ["a", "b", "c"]
    assert [i for i, _ in reciprocal_rank_fusion(rankings, FusionConfig(dense_weight=0))] == ["c", "b", "a"]
    tilted = dict(reciprocal_rank_fusion(rankings, FusionConfig(dense_weight=2, rrf_k=1)))
    assert tilted["a"] == pytest.approx(2 / 2 + 1 / 4)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"lexical_weight": -1}, "greater than or equal to 0"),
        ({"rrf_k": 0}, "greater than 0"),
        ({"dense_weight": 0, "lexical_weight": 0}, "both 0"),
    ],
)
def test_fusion_refuses_bad_parameters(fields: dict[str, float], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        FusionConfig(**fields)


class EndlessIndex:
    """A lexical index with more hits than asked for, whatever the limit (records the limits asked)."""

    def __init__(self) -> None:
        self.limits: list[int] = []

    def search(self, query: str, limit: int) -> LexicalHits:
        self.limits.append(limit)
        return LexicalHits([f"id-{i}" for i in range(limit)], [1.0] * limit, terms=1)


class RejectingChroma:
    """The dense side's read-back: a filter that passes none of the lexical hits."""

    recall_k = 10
    callback_manager = None
    store = SimpleNamespace(mode="memory")

    def collection(self) -> None:
        return None

    def fetch(self, ids: list[str]) -> dict:
        return {}


class NoFeed:
    """A follower with nothing to catch up on (no Chroma here)."""

    def open_check(self, collection: None, *, own_index: bool) -> None:
        pass

    def refresh(self, collection: None, *, may_rebuild: bool = False) -> None:
        pass


def test_a_selective_filter_widens_the_lexical_search_within_a_bound() -> None:
    index = EndlessIndex()
    hybrid = HybridRecallRetriever(RejectingChroma(), index, follower=NoFeed())  # type: ignore[arg-type]
    side = hybrid.lexical_candidates("vitamin")
    assert side is not None and side.ids == []
    assert index.limits == [10, 40, 160, 640]  # x4 each time, at most 64 x recall_k


def test_a_failed_batch_lands_nothing_and_releases_the_writer(tmp_path: Path) -> None:
    with TantivyIndex(tmp_path / "failing") as index:
        with pytest.raises(ValueError):
            index.add([LexicalRecord("a", "vitamin", ""), LexicalRecord("b", None, "")])  # type: ignore[arg-type]
        index.add([LexicalRecord("c", "vitamin", "")])  # the lock was released
        assert sorted(index.versions()) == ["c"]


# Beyond English: the analyser follows lexical_language, and an index answers only with the analyser it was built with.

CHINESE = {
    "vitamin": "维生素C是人体必需的营养素，缺乏会导致坏血病。",
    "volcano": "火山喷发时，岩浆从地壳深处涌出，形成熔岩和火山灰。",
    "tides": "潮汐主要由月球的引力引起。",
}


def chinese_index(analyser: Analyser) -> TantivyIndex:
    index = TantivyIndex(None, analyser)
    index.add([LexicalRecord(key, text, "") for key, text in CHINESE.items()])
    return index


@pytest.mark.parametrize(
    ("query", "expected"), [("维生素", "vitamin"), ("坏血病的原因", "vitamin"), ("岩浆", "volcano")]
)
def test_cjk_text_is_found_by_its_words_through_character_bigrams(query: str, expected: str) -> None:
    assert chinese_index(Analyser("cjk")).search(query, 3).ids[0] == expected
    assert chinese_index(Analyser("english")).search(query, 3).ids == []  # a CJK run is one "word" to it


def test_cjk_bigrams_cover_japanese_korean_and_mixed_text() -> None:
    assert cjk_bigrams("東京タワー") == " 東京 京タ タワ ワー "
    assert Analyser("cjk").terms("한국어 공부, Vitamin C!") == ["한국", "국어", "공부", "vitamin", "c"]
    assert Analyser("cjk").terms("中") == ["中"]


def test_european_languages_get_their_own_stemmer_and_stop_words() -> None:
    assert Analyser("german").terms("Die Häuser und der Kinder") == ["haus", "kind"]
    assert Analyser("french").terms("les maisons et la maison") == ["maison", "maison"]
    assert Analyser("english").terms("Die Häuser und der Kinder") == ["die", "häuser", "und", "der", "kinder"]
    assert Analyser("greek").terms("ΣΠΙΤΙΑ") == Analyser("greek").terms("σπιτια")  # no stop list: stemmed only


def test_an_index_refuses_another_analyser_until_reindexed(tmp_path: Path) -> None:
    path = tmp_path / "lexical"
    with TantivyIndex(path, Analyser("english")) as english:
        english.add([LexicalRecord("a", "Häuser am See", "")])
    german = TantivyIndex(path, Analyser("german"))
    with pytest.raises(LexicalIndexError, match="built for lexical_language 'english'.*run `twostage reindex`"):
        german.count()
    german.reset()  # what reindex does first
    german.add([LexicalRecord("a", "Häuser am See", "")])
    assert german.search("Haus", 5).ids == ["a"]
    with pytest.raises(LexicalIndexError, match="built for lexical_language 'german'"):
        TantivyIndex(path, Analyser("english")).count()


def test_an_index_built_before_analysers_were_recorded_counts_as_english(tmp_path: Path) -> None:
    path = tmp_path / "lexical"
    with TantivyIndex(path) as index:
        index.add([LexicalRecord("a", "vitamins", "")])
    (path / RECORD_FILE).unlink()
    assert TantivyIndex(path, Analyser("english")).search("vitamin", 5).ids == ["a"]
    with pytest.raises(LexicalIndexError, match="built for lexical_language 'english'"):
        TantivyIndex(path, Analyser("cjk")).count()


def test_unknown_languages_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="'klingon' is not one of: arabic, danish"):
        Analyser("klingon")  # type: ignore[arg-type]


# Faults of the folder: one error that says what to do, never a raw tantivy error.


def test_a_folder_removed_under_a_live_index_says_reindex_and_recovers_after_it(tmp_path: Path) -> None:
    path = tmp_path / "lexical"
    live = TantivyIndex(path)
    live.add([LexicalRecord("a", "vitamin", "")])
    shutil.rmtree(path)
    for use in (lambda: live.search("vitamin", 5), live.count, lambda: live.add([LexicalRecord("b", "x", "")])):
        with pytest.raises(LexicalIndexError, match="is gone: its folder was removed while in use.*twostage reindex"):
            use()
    with TantivyIndex(path) as rebuilt:  # `twostage reindex`, in another process
        rebuilt.add([LexicalRecord("a", "vitamin", "")])
    assert live.search("vitamin", 5).ids == ["a"]  # the live one reopened what is there now


def test_a_file_where_the_index_should_be_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "docs"
    path.write_text("the user's own file")
    index = TantivyIndex(path)
    for use in (index.count, index.reset):
        with pytest.raises(LexicalIndexError, match="is a file, not a folder; move it away or set lexical_dir"):
            use()
    assert path.read_text() == "the user's own file"
