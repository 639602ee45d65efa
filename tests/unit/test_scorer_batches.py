"""How the local cross-encoder groups pairs into batches: shortest first, bounded in pairs and in padded tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from support import WordTokenizer, fake_cross_encoder

from llama_index_twostage.stage2.backends import OnnxSequenceClassifier
from llama_index_twostage.stage2.scorers import CPU_BATCH_TOKENS, CrossEncoderScorer


def scorer(batch_size: int = 4, batch_tokens: int | None = 100, device: str = "cpu", window: int = 512):
    model = fake_cross_encoder(window, tokenizer=WordTokenizer(), device=device)
    return CrossEncoderScorer(model, name="m", batch_size=batch_size, batch_tokens=batch_tokens)


def text(words: int) -> str:
    return " ".join(["word"] * words)


def test_batches_are_shortest_first_and_bounded_in_pairs_and_padded_tokens():
    lengths = [30, 5, 60, 6, 7, 8, 9, 10, 200, 31]  # pair tokens: these + 1 query word + 3 special tokens
    batching = scorer(batch_size=4, batch_tokens=100)
    batches = batching.batches("query", [text(words) for words in lengths])
    pair = [words + 4 for words in lengths]
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))  # each pair once
    flat = [index for batch in batches for index in batch]
    assert [pair[index] for index in flat] == sorted(pair)  # shortest first
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * max(pair[index] for index in batch) <= 100
    assert [len(batch) for batch in batches] == [4, 2, 2, 1, 1]  # short ones together, long ones alone
    assert batches[-1] == [8]  # longer than the budget: alone, never cut


def test_pair_lengths_stop_at_the_window():
    batching = scorer(batch_tokens=None, window=64)
    assert batching.window.pair_lengths("query", [text(10), text(500)]) == [14, 64]


def test_without_a_token_budget_only_the_pair_count_bounds_a_batch():
    batches = scorer(batch_size=3, batch_tokens=None, device="cuda").batches("q", [text(words) for words in range(9)])
    assert [len(batch) for batch in batches] == [3, 3, 3]


@pytest.mark.parametrize(("device", "expected"), [("cpu", CPU_BATCH_TOKENS), ("cuda", None)])
def test_the_token_budget_defaults_by_device(device, expected):
    assert scorer(batch_tokens=None, device=device).batch_tokens == expected
    assert scorer(batch_tokens=256, device=device).batch_tokens == 256  # given: used as given


@pytest.mark.parametrize(
    ("providers", "expected"),
    [(["CUDAExecutionProvider", "CPUExecutionProvider"], None), (["CPUExecutionProvider"], CPU_BATCH_TOKENS)],
)
def test_an_onnx_model_batches_for_where_its_session_runs(providers, expected):
    """An ONNX backend's CrossEncoder stays on the CPU while its session may run on CUDA: the session decides."""
    model = fake_cross_encoder(tokenizer=WordTokenizer(), device="cpu")
    model.model = OnnxSequenceClassifier.__new__(OnnxSequenceClassifier)  # no export: only its session is read
    model.model.session = SimpleNamespace(get_providers=lambda: providers)
    assert CrossEncoderScorer(model, name="m").batch_tokens == expected


def test_a_non_positive_token_budget_is_refused():
    with pytest.raises(ValueError, match="batch_tokens must be positive"):
        scorer(batch_tokens=0)
