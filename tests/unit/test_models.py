"""Model loading: errors that name the setting and the model, the offline hint, and one load per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from llama_index_twostage.errors import ModelLoadError
from llama_index_twostage.models import ModelPool, load_or_explain

HINT = "The model hub was unreachable"


def failing(error: Exception):
    def load():
        raise error

    return load


def test_load_or_explain_returns_the_model():
    assert load_or_explain("embed_model", "m", lambda: 42) == 42


def test_load_or_explain_names_setting_model_and_cause():
    cause = ValueError("bad config.json")
    with pytest.raises(ModelLoadError) as excinfo:
        load_or_explain("rerank_model", "org/reranker", failing(cause))
    text = str(excinfo.value)
    assert "rerank_model" in text and "'org/reranker'" in text
    assert "ValueError: bad config.json" in text
    assert HINT not in text
    assert excinfo.value.__cause__ is cause
    assert isinstance(excinfo.value, OSError)


@pytest.mark.parametrize(
    "error",
    [
        OSError("We couldn't connect to 'https://huggingface.co' to load the files"),
        ConnectionError("Max retries exceeded with url"),
    ],
)
def test_load_or_explain_adds_the_offline_hint(error):
    with pytest.raises(ModelLoadError) as excinfo:
        load_or_explain("embed_model", "org/m", failing(error))
    assert HINT in str(excinfo.value)
    assert "point embed_model at its local directory" in str(excinfo.value)


def test_offline_hint_found_in_the_cause_chain():
    def load():
        try:
            raise ConnectionError("name resolution failed")
        except ConnectionError as inner:
            raise RuntimeError("loading failed") from inner

    with pytest.raises(ModelLoadError, match=HINT):
        load_or_explain("embed_model", "org/m", load)


@pytest.mark.timeout(120)
def test_loading_a_hub_id_offline_gives_the_hint():
    # A fresh process: HF_HUB_OFFLINE is read when huggingface_hub is imported.
    code = textwrap.dedent(
        """
        from llama_index_twostage.errors import ModelLoadError
        from llama_index_twostage.stage2 import CrossEncoderScorer
        try:
            CrossEncoderScorer.load("org-that-is-not/cached-model", device="cpu")
        except ModelLoadError as error:
            print("MESSAGE:", error)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=110)
    assert "MESSAGE:" in result.stdout, result.stdout + result.stderr
    message = result.stdout.split("MESSAGE:", 1)[1]
    assert "rerank_model" in message and "'org-that-is-not/cached-model'" in message
    assert HINT in message


def test_pool_loads_once_under_concurrency():
    pool, key = ModelPool(), ("test", "model")
    calls = []
    calling = threading.Condition()
    arrived = 0
    results = [None] * 8

    def load():
        calls.append(threading.get_ident())
        with calling:  # the load runs until every thread has called get: they arrive while it runs
            assert calling.wait_for(lambda: arrived == 8, timeout=10)
        return object()

    def worker(index):
        nonlocal arrived
        with calling:
            arrived += 1
            calling.notify_all()
        results[index] = pool.get(key, load)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(calls) == 1
    assert results[0] is not None and all(result is results[0] for result in results)


def test_pool_keys_are_independent_and_pools_share_nothing():
    pool = ModelPool()
    assert (pool.get(("test", 1), lambda: "a"), pool.get(("test", 2), lambda: "b")) == ("a", "b")
    assert ModelPool().get(("test", 1), lambda: "other pool") == "other pool"
    assert pool.get(("test", 1), lambda: "not loaded again") == "a"


def test_failed_load_is_not_cached():
    pool, key = ModelPool(), ("test", "model")
    with pytest.raises(RuntimeError):
        pool.get(key, failing(RuntimeError("transient")))
    assert pool.get(key, lambda: "loaded") == "loaded"


def test_closed_pool_drops_its_models():
    pool = ModelPool()
    pool.get("key", lambda: "first")
    pool.close()
    assert len(pool) == 0 and pool.get("key", lambda: "reloaded") == "reloaded"


def test_the_one_private_read_finds_the_bi_encoders_sentence_transformer():
    """LlamaIndex has no public route to a HuggingFaceEmbedding's SentenceTransformer: the read fails loudly if it
    moves, and the window it guards is the embedding's public max_length."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from sentence_transformers import SentenceTransformer
    from support import EMBED_DIR

    from llama_index_twostage.models import sentence_transformer_of

    embedding = HuggingFaceEmbedding(model_name=str(EMBED_DIR), device="cpu")
    encoder = sentence_transformer_of(embedding)
    assert isinstance(encoder, SentenceTransformer) and encoder.max_seq_length == embedding.max_length == 256
