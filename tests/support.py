"""What the tests share besides fixtures: where the real models and data are, the SciFact subset, and the test
doubles (a cheap embedding, recording scorers). Tests import it (``from support import ...``); ``conftest.py``
builds its fixtures on it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EMBED_DIR = SHARED / "models" / "all-MiniLM-L6-v2"
RERANK_DIR = SHARED / "models" / "twostage-test-reranker"
SCIFACT_DIR = SHARED / "data" / "scifact"
INFINITY = REPO / ".venv-infinity" / "bin" / "infinity_emb"  # scripts/setup_infinity.sh creates it
INFINITY_KEY = "sk-infinity-test-5f2c9e"

N_QUERIES = 30
N_OTHER_DOCS = 100  # ~185 ms per chunk on 2 cores: 130 docs embed in ~25 s


def require(path: Path) -> Path:
    """``path``, or the test fails: integration tests must fail, not skip, without ../shared (a silently skipped
    suite proves nothing)."""
    if not path.exists():
        pytest.fail(
            f"{path} is missing: integration tests need the shared models and data in {SHARED} "
            "(a 'shared' folder beside the repository checkout)",
            pytrace=False,
        )
    return path


def scifact_subset(**load: Any) -> Any:
    """The first 30 judged SciFact test queries; corpus = their relevant docs plus 100 others (file order)."""
    from llama_index_twostage.evaluation.datasets import load_beir

    full = load_beir(require(SCIFACT_DIR), **load).limit(N_QUERIES)
    relevant = {doc_id for judgments in full.qrels.values() for doc_id in judgments}
    others = [doc_id for doc_id in full.corpus if doc_id not in relevant][:N_OTHER_DOCS]
    keep = [doc_id for doc_id in full.corpus if doc_id in relevant] + others
    return replace(full, corpus={doc_id: full.corpus[doc_id] for doc_id in keep})


def assert_same_ranking(got_ids: list[str], expected_ids: list[str], scores: dict[str, float], tol: float) -> None:
    """Same order, except that ids whose reference scores differ by less than ``tol`` may swap."""
    assert len(got_ids) == len(expected_ids)
    for position, (got, expected) in enumerate(zip(got_ids, expected_ids)):
        if got != expected:
            assert abs(scores[got] - scores[expected]) < tol, (
                f"rank {position + 1}: got {got} ({scores.get(got)}), expected {expected} ({scores[expected]})"
            )
    # Near-tie swaps aside, the two lists hold the same ids (a boundary near-tie may differ: check scores).
    for node_id in set(got_ids) ^ set(expected_ids):
        assert abs(scores[node_id] - scores[expected_ids[-1]]) < tol, node_id


# --- test doubles -------------------------------------------------------------------------------------------------

HASH_MODEL = "test/hash-embedding"  # a hub-style name: settings accept it without a directory


class HashEmbedding(BaseEmbedding):
    """A cheap deterministic embedding (a normalised SHA-256 of the text) that counts what it embeds.

    For properties that do not depend on meaning: ingestion bookkeeping, fuzzed input, retries.
    """

    model_name: str = HASH_MODEL
    _embedded: list[str] = PrivateAttr(default_factory=list)

    @property
    def embedded(self) -> list[str]:
        return self._embedded

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        values = [byte - 127.5 for byte in digest]
        norm = math.sqrt(sum(value * value for value in values))
        return [value / norm for value in values]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        """The batch path ingestion takes: recorded (a single text is a probe, e.g. of the dimension)."""
        self._embedded.extend(texts)
        return [self._vector(text) for text in texts]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def fake_cross_encoder(
    window: int = 512, outputs: int = 1, tokenizer: Any = None, device: str = "cpu"
) -> SimpleNamespace:
    """What CrossEncoderScorer reads of a model to name it and batch for it: window, activation, head, tokenizer
    and device (no weights: ``model`` is None)."""
    labels = SimpleNamespace(id2label={index: f"LABEL_{index}" for index in range(outputs)})
    return SimpleNamespace(
        tokenizer=tokenizer,
        max_seq_length=window,
        activation_fn=torch.nn.Identity(),
        num_labels=outputs,
        config=labels,
        device=torch.device(device),
        model=None,
    )


class WordTokenizer:
    """A tokenizer double for token counting: one token per word, 3 special tokens around a pair (as BERT's)."""

    def __call__(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[0] * len(text.split()) for text in texts]}

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2


class RecordingPairs:
    """A real scorer (any ``PairScorer``) that records every (query, text) pair it is asked to score."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.cache_key, self.window = inner.name, inner.cache_key, inner.window
        self.pairs: list[tuple[str, str]] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.pairs.extend((query, text) for text in texts)
        return self.inner.score(query, texts)


class RecordingScorer:
    """A ``PairScorer`` double: scores each text with ``score_text`` and records every batch it is asked for.

    For reranker logic that does not depend on a model (cascade, cache, ranking rules, evaluation plumbing).
    """

    def __init__(self, score_text: Callable[[str], float] = len, *, name: str = "test/scorer", window=None) -> None:
        self.name = name
        self.cache_key = ("recording", name)
        self.window = window
        self.score_text = score_text
        self.calls: list[list[str]] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.calls.append(list(texts))
        return [float(self.score_text(text)) for text in texts]

    @property
    def pairs(self) -> list[str]:
        """Every text scored, in order."""
        return [text for call in self.calls for text in call]
