"""RetrieverSettings: sources and their precedence, validation messages, and the Chroma token kept secret."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.retry import RetryPolicy
from llama_index_twostage.settings import FLAT_NAMES, SECTIONS, RetrieverSettings
from llama_index_twostage.stage1 import FusionConfig
from llama_index_twostage.stage2 import CascadeConfig, PairTemplate, RerankServerConfig
from llama_index_twostage.store import ChromaConfig
from llama_index_twostage.store.chroma import check_collection_name

TOKEN = "tok-3f9a-very-secret"


def error_text(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


# --- sources and precedence -------------------------------------------------------------------------------------


def test_keyword_arguments_are_taken():
    settings = RetrieverSettings(collection="docs", recall_k=40, top_k=4, chroma_mode="memory", device="cpu")
    assert (settings.collection, settings.recall_k, settings.top_k) == ("docs", 40, 4)
    assert settings.chroma_mode == "memory"
    assert settings.device == "cpu"


def test_env_vars_are_read(monkeypatch):
    monkeypatch.setenv("TWOSTAGE_COLLECTION", "from-env")
    monkeypatch.setenv("TWOSTAGE_RECALL_K", "33")
    monkeypatch.setenv("TWOSTAGE_NORMALIZE_SCORES", "true")
    settings = RetrieverSettings()
    assert settings.collection == "from-env"
    assert settings.recall_k == 33
    assert settings.normalize_scores is True


def test_from_toml_reads_top_level_keys(tmp_path):
    config = tmp_path / "twostage.toml"
    config.write_text('collection = "from-toml"\nrecall_k = 50\ntop_k = 7\nchunk_size = 256\n')
    settings = RetrieverSettings.from_toml(config)
    assert (settings.collection, settings.recall_k, settings.top_k, settings.chunk_size) == ("from-toml", 50, 7, 256)


def test_precedence_is_kwargs_then_env_then_toml(tmp_path, monkeypatch):
    config = tmp_path / "twostage.toml"
    config.write_text('collection = "from-toml"\nrecall_k = 50\ntop_k = 7\n')
    monkeypatch.setenv("TWOSTAGE_RECALL_K", "60")
    monkeypatch.setenv("TWOSTAGE_TOP_K", "8")
    settings = RetrieverSettings.from_toml(config, top_k=9)
    assert settings.collection == "from-toml"  # only the file sets it
    assert settings.recall_k == 60  # env beats the file
    assert settings.top_k == 9  # kwargs beat env and file


def test_from_toml_equals_the_same_settings_built_by_keyword(tmp_path, monkeypatch):
    config = tmp_path / "twostage.toml"
    config.write_text('collection = "from-toml"\nrecall_k = 50\ntop_k = 7\nchroma_host = "h"\n')
    monkeypatch.setenv("TWOSTAGE_TOP_K", "8")
    loaded = RetrieverSettings.from_toml(config, recall_k=60)
    assert type(loaded) is RetrieverSettings
    assert loaded == RetrieverSettings(collection="from-toml", recall_k=60, chroma_host="h")
    assert loaded.top_k == 8 and loaded.chroma_mode == "server"


def test_from_toml_missing_file_is_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        RetrieverSettings.from_toml(tmp_path / "absent.toml")


def test_plain_settings_ignore_toml_in_cwd(tmp_path, monkeypatch):
    (tmp_path / "twostage.toml").write_text('collection = "should-not-load"\n')
    monkeypatch.chdir(tmp_path)
    assert RetrieverSettings().collection == "twostage"


def test_chroma_host_alone_selects_server_mode():
    settings = RetrieverSettings(chroma_host="chroma.internal", chroma_port=9000)
    assert settings.chroma_mode == "server"
    assert settings.chroma.server_address == "chroma.internal:9000"


def test_chroma_host_from_env_selects_server_mode(monkeypatch):
    monkeypatch.setenv("TWOSTAGE_CHROMA_HOST", "chroma.internal")
    assert RetrieverSettings().chroma_mode == "server"


def test_explicit_mode_wins_over_host():
    assert RetrieverSettings(chroma_host="h", chroma_mode="memory").chroma_mode == "memory"


def test_server_mode_without_host_is_refused():
    with pytest.raises(ValidationError, match="chroma_host"):
        RetrieverSettings(chroma_mode="server")


def test_settings_are_frozen():
    settings = RetrieverSettings()
    with pytest.raises(ValidationError):
        settings.top_k = 3  # type: ignore[misc]


# --- bad inputs: the error names the field and says what to do --------------------------------------------------


def test_recall_k_below_top_k_names_both_and_the_fix():
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(recall_k=3, top_k=5)
    text = error_text(excinfo)
    assert "recall_k (3) < top_k (5)" in text
    assert "raise recall_k or lower top_k" in text


@pytest.mark.parametrize(
    "field",
    ["recall_k", "top_k", "embed_batch_size", "rerank_batch_size", "upsert_batch_size", "chunk_size", "max_length"],
)
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sizes_are_refused(field, value):
    overrides = {field: value}
    if field == "chunk_size":
        overrides["chunk_overlap"] = 0  # so only the size itself is wrong
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(**overrides)
    assert field in error_text(excinfo)
    assert "greater than 0" in error_text(excinfo)


@pytest.mark.parametrize(("field", "value"), [("chroma_port", 0), ("chroma_port", 70000), ("chroma_timeout_s", 0)])
def test_out_of_range_server_settings_are_refused(field, value):
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(**{field: value})
    assert field in error_text(excinfo)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "tpu"])
def test_unknown_device_is_refused_with_the_choices(device):
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(device=device)
    text = error_text(excinfo)
    assert "device" in text and "unknown device" in text
    assert "'cpu', 'cuda', 'cuda:N' or 'mps'" in text


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps"])
def test_known_devices_are_accepted(device):
    assert RetrieverSettings(device=device).device == device


@pytest.mark.parametrize("device", ["", "auto"])
def test_auto_device_means_unset(device):
    assert RetrieverSettings(device=device).device is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("ab", "3-512 characters"),
        ("-abc", "starting and ending"),
        ("abc_", "starting and ending"),
        ("has space", "3-512 characters"),
        ("a" * 513, "3-512 characters"),
        ("a..b", "two consecutive periods"),
        ("192.168.1.1", "IP address"),
        ("10.0.0.1", "IP address"),
    ],
)
def test_invalid_collection_names_are_refused(name, problem):
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(collection=name)
    text = error_text(excinfo)
    assert "collection" in text
    assert problem in text


# Names on both sides of each of Chroma's rules; Chroma itself is the oracle.
CHROMA_NAME_CASES = [
    "abc",
    "ab",
    "ABC",
    "a" * 512,
    "a" * 513,
    "a.b.c",
    "a..b",
    "a-b_c.d",
    "_abc",
    "abc.",
    "-ab",
    "1.2.3",
    "1.2.3.4",
    "0.0.0.0",
    "010.0.0.1",
    "255.255.255.256",
    "::1",
    "café",
    "ab c",
    "12345",
    "abc\n",
]


@pytest.fixture(scope="module")
def ephemeral_client():
    # Through the library's own store: a second EphemeralClient with other Chroma settings is refused.
    from llama_index_twostage.store import ChromaStore

    with ChromaStore(mode="memory") as store:
        yield store.client


@pytest.mark.parametrize("name", CHROMA_NAME_CASES)
def test_collection_name_validator_agrees_with_chroma(name, ephemeral_client):
    try:
        check_collection_name(name)
        ours = True
    except ValueError:
        ours = False
    try:
        ephemeral_client.create_collection(name, metadata={"probe": uuid.uuid4().hex})
    except Exception as error:  # Chroma raises its own InvalidArgumentError
        assert "already exists" not in str(error)
        chroma = False
    else:
        ephemeral_client.delete_collection(name)
        chroma = True
    assert ours == chroma, f"validator says {ours}, Chroma says {chroma} for {name!r}"


@pytest.mark.parametrize("field", ["embed_model", "rerank_model"])
def test_missing_model_directory_is_refused(field, tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(**{field: missing})
    text = error_text(excinfo)
    assert field in text
    assert "does not exist" in text and "hub id" in text


def test_hub_ids_are_not_checked_on_disk():
    settings = RetrieverSettings(embed_model="org/some-model", rerank_model="plain-name")
    assert settings.embed_model == "org/some-model"


def test_existing_model_directory_is_accepted(tmp_path):
    assert RetrieverSettings(embed_model=str(tmp_path)).embed_model == str(tmp_path)


@pytest.mark.parametrize("overlap", [512, 600])
def test_chunk_overlap_not_below_chunk_size_is_refused(overlap):
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(chunk_size=512, chunk_overlap=overlap)
    assert f"chunk_overlap ({overlap}) must be smaller than chunk_size (512)" in error_text(excinfo)


def test_unknown_setting_is_refused():
    with pytest.raises(ValidationError, match="recal_k"):
        RetrieverSettings(recal_k=10)


# --- the token --------------------------------------------------------------------------------------------------


@pytest.fixture
def with_token() -> RetrieverSettings:
    return RetrieverSettings(chroma_host="chroma.internal", chroma_token=TOKEN)


def test_token_is_kept_for_use(with_token):
    assert with_token.chroma_token.get_secret_value() == TOKEN


def test_token_never_printed(with_token):
    for text in (repr(with_token), str(with_token), str(with_token.to_dict()), with_token.model_dump_json()):
        assert TOKEN not in text
    assert with_token.to_dict()["chroma_token"] == "**********"


@pytest.mark.parametrize(
    "bad", [{"recall_k": 1, "top_k": 5}, {"chroma_port": 0}, {"device": "gpu"}, {"collection": "a..b"}]
)
def test_token_not_in_validation_errors(bad):
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(chroma_host="chroma.internal", chroma_token=TOKEN, **bad)
    assert TOKEN not in str(excinfo.value)
    assert TOKEN not in repr(excinfo.value)


def test_token_not_in_structured_validation_errors():
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(chroma_host="chroma.internal", chroma_token=TOKEN, recall_k=1, top_k=5)
    assert TOKEN not in repr(excinfo.value.errors())


def test_token_from_env_not_in_validation_errors(monkeypatch):
    monkeypatch.setenv("TWOSTAGE_CHROMA_TOKEN", TOKEN)
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings(chroma_host="h", top_k=0)
    assert TOKEN not in str(excinfo.value)


def test_round_trip_does_not_take_the_mask_for_a_token(with_token):
    data = with_token.to_dict()
    restored = RetrieverSettings.from_dict(data)
    assert restored.chroma_token is None
    assert {k: v for k, v in restored.to_dict().items() if k != "chroma_token"} == {
        k: v for k, v in data.items() if k != "chroma_token"
    }


def test_round_trip_keeps_a_real_token():
    restored = RetrieverSettings.from_dict({"chroma_host": "h", "chroma_token": TOKEN})
    assert restored.chroma_token.get_secret_value() == TOKEN


def test_secrets_given_in_sections_leave_the_callers_dicts_as_they_were():
    chroma = {"host": "chroma.internal", "token": TOKEN}
    rerank_server = {"urls": ["http://127.0.0.1:7997/rerank"], "api_key": "key-of-the-caller"}
    settings = RetrieverSettings(chroma=chroma, rerank_server=rerank_server, rerank_backend="http")
    assert chroma == {"host": "chroma.internal", "token": TOKEN}  # still the strings the caller may reuse
    assert rerank_server["api_key"] == "key-of-the-caller"
    assert settings.chroma_token.get_secret_value() == TOKEN


def test_round_trip_without_token():
    settings = RetrieverSettings(collection="docs", recall_k=30, top_k=3, score_threshold=0.2)
    assert RetrieverSettings.from_dict(settings.to_dict()) == settings


# --- values that make no sense are refused, naming the field (issue 15) -------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("TWOSTAGE_CHROMA_TIMEOUT_S", "inf", "chroma_timeout_s"),
        ("TWOSTAGE_CHROMA_RETRY_BACKOFF_S", "inf", "chroma_retry_backoff_s"),
        ("TWOSTAGE_SCORE_THRESHOLD", "nan", "score_threshold"),
        ("TWOSTAGE_RECALL_GUARD_GAP", "nan", "recall_guard_gap"),
    ],
)
def test_non_finite_values_are_refused_naming_the_field(monkeypatch, variable, value, field):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as excinfo:
        RetrieverSettings()
    assert [error["loc"] for error in excinfo.value.errors()] == [(field,)]
    assert "finite number" in str(excinfo.value)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("http://chroma.internal", ("chroma.internal", 8000, False)),
        ("https://chroma.internal:8443", ("chroma.internal", 8443, True)),
        ("http://127.0.0.1:9000/", ("127.0.0.1", 9000, False)),
    ],
)
def test_a_server_url_is_split_into_host_port_and_ssl(host, expected):
    settings = RetrieverSettings(chroma_host=host)
    assert (settings.chroma_host, settings.chroma_port, settings.chroma_ssl) == expected
    assert settings.chroma_mode == "server"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"chroma_host": "http://h:9000/api"}, "not a server address"),
        ({"chroma_host": "ftp://h"}, "not a server address"),
        ({"chroma_host": "http://h:9000", "chroma_port": 8000}, "chroma_port=9000, but chroma_port is set to 8000"),
        ({"chroma_host": "https://h", "chroma_ssl": False}, "chroma_ssl=True, but chroma_ssl is set to False"),
    ],
)
def test_a_server_url_that_cannot_be_taken_is_refused_with_the_fix(fields, message):
    with pytest.raises(ValidationError, match=message):
        RetrieverSettings(**fields)


def test_malformed_toml_and_a_folder_are_one_clear_error(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text('collection = "unterminated\n')
    with pytest.raises(ConfigurationError, match="is not valid TOML"):
        RetrieverSettings.from_toml(broken)
    with pytest.raises(ConfigurationError, match="is a folder: give the path of a TOML file"):
        RetrieverSettings.from_toml(tmp_path)


def test_rerank_metadata_keys_read_from_the_environment_comma_separated_or_as_json(twostage_env):
    twostage_env(RERANK_METADATA_KEYS="title, section")
    assert RetrieverSettings().rerank_metadata_keys == ("title", "section")
    twostage_env(RERANK_METADATA_KEYS='["title"]')
    assert RetrieverSettings().rerank_metadata_keys == ("title",)
    twostage_env(RERANK_METADATA_KEYS="")
    assert RetrieverSettings().rerank_metadata_keys == ()
    assert RetrieverSettings(rerank_metadata_keys=None).rerank_metadata_keys is None


def test_long_document_mode_and_relevant_class_are_checked():
    with pytest.raises(ValidationError, match="rerank_long_documents"):
        RetrieverSettings(rerank_long_documents="split")
    with pytest.raises(ValidationError, match="rerank_relevant_class"):
        RetrieverSettings(rerank_relevant_class=-1)


def test_an_empty_lexical_dir_is_the_default_location_and_refresh_is_checked(monkeypatch):
    """``TWOSTAGE_LEXICAL_DIR=`` must not mean the working directory (issue 20 item 7)."""
    monkeypatch.setenv("TWOSTAGE_LEXICAL_DIR", "")
    assert RetrieverSettings().lexical_dir is None
    assert RetrieverSettings(lexical_dir="  ").lexical_dir is None
    assert RetrieverSettings().lexical_refresh_s <= 10
    with pytest.raises(ValidationError, match="lexical_refresh_s"):
        RetrieverSettings(lexical_refresh_s=-1)


# Composition: each component's config is a section; every flat name keeps working.


def test_flat_names_and_sections_build_the_same_settings(monkeypatch):
    flat = RetrieverSettings(
        chroma_host="h", chroma_retries=5, rrf_k=30, rerank_metadata_keys=["title"], cascade_k=20, cascade_max_length=64
    )
    sectioned = RetrieverSettings(
        chroma=ChromaConfig(host="h", retry=RetryPolicy(retries=5, backoff_s=0.2)),
        fusion=FusionConfig(rrf_k=30),
        pair_template=PairTemplate(metadata_keys=("title",)),
        cascade={"k": 20, "max_length": 64},
    )
    assert flat == sectioned
    assert (flat.chroma.retry.retries, flat.chroma_retries, flat.fusion.rrf_k, flat.cascade_k) == (5, 5, 30, 20)
    assert flat.chroma.mode == "server"  # the host alone selects server mode in either form


def test_every_flat_name_is_a_variable_and_reads_back(monkeypatch):
    monkeypatch.setenv("TWOSTAGE_CHROMA_RETRY_BACKOFF_S", "1.5")
    monkeypatch.setenv("twostage_lexical_language", "german")  # any case, as before
    monkeypatch.setenv("TWOSTAGE_RERANK_URL", "http://a:1/rerank, http://b:2/rerank")
    settings = RetrieverSettings()
    assert settings.chroma.retry.backoff_s == 1.5 and settings.lexical.language == "german"
    assert settings.rerank_server.urls == ("http://a:1/rerank", "http://b:2/rerank")
    assert set(settings.to_dict()) == set(RetrieverSettings.model_fields) - set(SECTIONS) | set(FLAT_NAMES)


def test_sectioned_toml_mixes_with_flat_keys_and_the_environment_wins_setting_by_setting(tmp_path, monkeypatch):
    path = tmp_path / "settings.toml"
    path.write_text('recall_k = 40\nrrf_k = 20\n[chroma]\nhost = "h"\nport = 9\n[chroma.retry]\nretries = 7\n')
    monkeypatch.setenv("TWOSTAGE_CHROMA_PORT", "10")
    settings = RetrieverSettings.from_toml(path, top_k=4)
    assert (settings.chroma.host, settings.chroma.port, settings.chroma.retry.retries) == ("h", 10, 7)
    assert (settings.recall_k, settings.top_k, settings.fusion.rrf_k, settings.chroma.mode) == (40, 4, 20, "server")


def test_a_setting_given_flat_and_in_its_section_is_refused(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("chroma_port = 9\n[chroma]\nport = 10\n")
    with pytest.raises(ConfigurationError, match="chroma_port is given twice"):
        RetrieverSettings.from_toml(path)


def test_errors_name_the_flat_setting_even_inside_a_section():
    with pytest.raises(ValidationError) as raised:
        RetrieverSettings(chroma={"retry": {"retries": -1}})
    assert [error["loc"] for error in raised.value.errors()] == [("chroma_retries",)]


def test_a_copy_with_changes_is_validated_like_new_settings():
    settings = RetrieverSettings(recall_k=20, chroma_host="h")
    assert settings.replace(top_k=10).top_k == 10 and settings.replace(top_k=10).chroma.host == "h"
    with pytest.raises(ValidationError, match="recall_k"):
        settings.model_copy(update={"top_k": 50})  # pydantic's copy would take it unchecked
    assert settings.model_copy(update={"lexical_dir": "/x"}).lexical.dir == Path("/x")


def test_each_component_checks_its_own_rules_without_the_settings():
    with pytest.raises(ValidationError, match="both 0"):
        FusionConfig(dense_weight=0, lexical_weight=0)
    with pytest.raises(ValidationError, match="lacks"):
        PairTemplate(query_template="no query")
    with pytest.raises(ValidationError, match="names a replica twice"):
        RerankServerConfig(urls="http://a/r,http://a/r")
    with pytest.raises(ValidationError, match="needs chroma_host"):
        ChromaConfig(mode="server")
    with pytest.raises(ConfigurationError, match="the shortlist must hold top_k"):
        CascadeConfig(k=3).check(top_k=5, backend="torch", max_length=None)
