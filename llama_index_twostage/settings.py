"""``RetrieverSettings``: every knob of the two-stage pipeline in one validated object.

Values come from keyword arguments, then ``TWOSTAGE_*`` environment variables, then an optional TOML file
(:meth:`RetrieverSettings.from_toml`), in that order of precedence. Nothing here imports the rest of the package,
so every other module can depend on it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from llama_index_twostage.errors import ConfigurationError

SPLITTERS = "sentence, markdown, semantic or code:LANG (e.g. code:python)"

ChromaMode = Literal["embedded", "memory", "server"]
DistanceSpace = Literal["cosine", "l2", "ip"]
RerankBackend = Literal["torch", "torch-bf16", "torch-fp16", "onnx", "onnx-int8"]
BackendSetting = Literal["auto", "torch", "torch-bf16", "torch-fp16", "onnx", "onnx-int8", "http"]
RerankApi = Literal["cohere", "tei"]
LongDocuments = Literal["truncate", "max-window"]
Stage1Mode = Literal["dense", "hybrid", "lexical"]
# The BM25 analysers (store/analysis.py): tantivy's stemmers, and character bigrams for Chinese, Japanese and Korean.
LexicalLanguage = Literal[
    "arabic",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
    "cjk",
]

_COLLECTION_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu|npu)(:\d+)?)$")


def _validate_collection_name(name: str) -> str:
    """Apply Chroma's naming rules up front, so a bad name fails at configuration time, not at first write."""
    problem = None
    if not _COLLECTION_NAME.fullmatch(name):
        problem = "use 3-512 characters from [a-zA-Z0-9._-], starting and ending with a letter or digit"
    elif ".." in name:
        problem = "do not use two consecutive periods"
    else:
        try:
            ipaddress.ip_address(name)
            problem = "do not use an IP address"
        except ValueError:
            pass
    if problem:
        raise ValueError(f"invalid Chroma collection name {name!r}: {problem}")
    return name


def split_server_url(url: str, given: dict[str, Any]) -> dict[str, Any]:
    """``http(s)://host[:port]`` -> chroma_host, chroma_port and chroma_ssl; refused where other settings disagree."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(
            f"chroma_host {url!r} is not a server address: give a host name (e.g. 'localhost') or a URL such as "
            "'http://localhost:8000' without a path"
        )
    values: dict[str, Any] = {"chroma_host": parts.hostname, "chroma_ssl": parts.scheme == "https"}
    if parts.port is not None:
        values["chroma_port"] = parts.port
    for key, value in values.items():
        if key != "chroma_host" and key in given and str(given[key]).lower() != str(value).lower():
            raise ValueError(f"chroma_host {url!r} says {key}={value}, but {key} is set to {given[key]!r}: give one")
    return values


def check_template(template: str, placeholders: set[str], *, required: set[str] | None = None) -> str:
    """A ``str.format`` template using only ``placeholders`` (each of ``required`` at least once; literal braces
    doubled), refused with what to write instead: a typo would otherwise fail on the first query, not at setup."""
    required = placeholders if required is None else required
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise ValueError(
            f"template {template!r} is malformed ({error}): write a literal brace as '{{{{' or '}}}}'"
        ) from None
    unknown = sorted(set(fields) - placeholders)
    missing = sorted(required - set(fields))
    if unknown or missing:
        names = ", ".join("{" + name + "}" for name in sorted(placeholders))
        problem = f"unknown placeholders {unknown}" if unknown else f"it lacks {missing}"
        raise ValueError(f"template {template!r}: {problem}; it may use {names} (literal braces doubled)")
    return template


def check_metadata_keys(keys: Sequence[str]) -> list[str]:
    """A list of metadata keys, each once (a bare string would otherwise be read as one key per character)."""
    if isinstance(keys, str):
        raise ValueError(f"metadata keys must be a list, not the string {keys!r}: write [{keys!r}]")
    repeated = sorted({key for key in keys if list(keys).count(key) > 1})
    if repeated:
        raise ValueError(f"metadata keys repeat {repeated}: name each key once")
    return list(keys)


def looks_like_local_path(model: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else path-shaped is meant as a local directory."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


SECRET_FIELDS = ("chroma_token", "rerank_api_key")


class _TokenMasked(PydanticBaseSettingsSource):
    """A settings source whose secrets (``chroma_token``, ``rerank_api_key``) are already ``SecretStr``s: pydantic's
    ``errors()`` echo the raw input of every source, which would otherwise show them."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self.source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        values = self.source()
        secrets = {name: SecretStr(values[name]) for name in SECRET_FIELDS if isinstance(values.get(name), str)}
        return {**values, **secrets}


class RetrieverSettings(BaseSettings):
    """Configuration of stage 1 (bi-encoder over Chroma), stage 2 (cross-encoder) and ingestion.

    Model fields take a Hugging Face hub id or a local sentence-transformers directory.
    """

    model_config = SettingsConfigDict(
        env_prefix="TWOSTAGE_",
        extra="forbid",
        validate_default=True,
        frozen=True,
        # Validation errors would otherwise echo every input, the Chroma token included.
        hide_input_in_errors=True,
    )

    # Where the vectors live.
    collection: str = Field("twostage", description="Chroma collection name (Chroma's naming rules apply).")
    chroma_mode: ChromaMode = Field(
        "embedded",
        description="'embedded' (on disk, in process), 'memory' (in process, gone on exit) or 'server'. "
        "Setting chroma_host alone selects 'server'.",
    )
    persist_dir: Path = Field(Path("./.twostage/chroma"), description="Directory of the embedded Chroma store.")
    chroma_host: str | None = Field(
        None, description="Host of a `chroma run` server; a URL (`http://host:port`) is split into host, port and ssl."
    )
    chroma_port: int = Field(8000, ge=1, le=65535, description="Port of the Chroma server.")
    chroma_ssl: bool = Field(False, description="Use HTTPS to reach the Chroma server.")
    chroma_token: SecretStr | None = Field(None, description="Bearer token for the Chroma server; never printed.")
    chroma_timeout_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="Bound on every Chroma server request, in seconds."
    )
    chroma_retries: int = Field(
        2,
        ge=0,
        description="Retries of a Chroma server call that failed in transport (refused, reset, timed out); every "
        "retried call is idempotent. 0 fails on the first error.",
    )
    chroma_retry_backoff_s: float = Field(
        0.2, ge=0, allow_inf_nan=False, description="Wait before the first retry, in seconds; doubles on each retry."
    )
    distance_space: DistanceSpace = Field("cosine", description="Distance space of newly created collections.")
    hnsw_ef_search: int | None = Field(
        None,
        gt=0,
        description="HNSW search breadth of the collection (unset: Chroma's 100). Keep it well above recall_k on "
        "large collections: the approximate index otherwise loses candidates before any reranker sees them.",
    )
    hnsw_ef_construction: int | None = Field(
        None,
        gt=0,
        description="HNSW build breadth of newly created collections (unset: Chroma's 100). A wider build makes a "
        "better graph: slower ingestion, higher recall at the same ef_search. Fixed once the collection exists.",
    )
    hnsw_max_neighbors: int | None = Field(
        None,
        ge=2,
        description="HNSW links per vector (M) of newly created collections (unset: Chroma's 16). More links: more "
        "memory and slower ingestion, higher recall on large collections. Fixed once the collection exists.",
    )

    # Models.
    embed_model: str = Field("sentence-transformers/all-MiniLM-L6-v2", description="Bi-encoder for stage 1.")
    embed_backend: Literal["auto", "torch", "torch-bf16", "torch-fp16", "onnx", "onnx-int8"] = Field(
        "auto",
        description="Bi-encoder runtime, for ingestion and queries alike: 'auto' (the fastest that searches like fp32 "
        "here: native half precision, and on a CPU onnx / onnx-int8 where the onnx extra is installed; each kept "
        "only if a calibration agrees and it is faster; else fp32), 'torch' (fp32), 'torch-bf16' / 'torch-fp16', "
        "'onnx' or 'onnx-int8'. Recorded in the collection; another precision may read or write it only within "
        "the calibration's tolerance.",
    )
    rerank_model: str = Field("cross-encoder/ms-marco-MiniLM-L6-v2", description="Cross-encoder for stage 2.")
    device: str | None = Field(None, description="'cpu', 'cuda', 'cuda:N', 'mps'; unset picks automatically.")
    trust_remote_code: bool = Field(False, description="Run model code from the hub. Off unless you trust it.")

    # The two stages.
    recall_k: int = Field(100, gt=0, description="Candidates stage 1 hands to the reranker.")
    top_k: int = Field(5, gt=0, description="Results after reranking.")
    max_length: int | None = Field(
        None, gt=0, description="Token window of the cross-encoder; longer pairs are truncated and reported."
    )
    normalize_scores: bool = Field(False, description="Return reranker scores in 0-1 (sigmoid of logits).")
    score_threshold: float | None = Field(
        None, allow_inf_nan=False, description="Drop reranked nodes scoring below this."
    )
    recall_guard: bool = Field(False, description="Warn when a query looks recall-starved (see recall_guard_gap).")
    recall_guard_gap: float = Field(
        0.05,
        gt=0,
        allow_inf_nan=False,
        description="The guard fires when the cosine at rank recall_k is within this of the top cosine: the "
        "candidates are still as similar as the best, so relevant ones likely lie beyond recall_k.",
    )

    # How stage 1 finds candidates (README "Hybrid stage 1").
    stage1_mode: Stage1Mode = Field(
        "hybrid",
        description="'hybrid' (default: bi-encoder and BM25 candidates fused by reciprocal rank; more relevant "
        "documents in the same recall_k), 'dense' (bi-encoder alone) or 'lexical' (BM25 alone).",
    )
    rrf_k: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="Reciprocal rank fusion constant: score = weight / (rrf_k + rank)."
    )
    dense_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="Weight of the bi-encoder's ranks.")
    lexical_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="Weight of BM25's ranks.")
    lexical_language: LexicalLanguage = Field(
        "english",
        description="How BM25 reads text: a language's stemmer (and its stop words where tantivy has them), or 'cjk' "
        "(character bigrams for Chinese, Japanese and Korean). Recorded in the index: changing it needs "
        "`twostage reindex`.",
    )
    lexical_dir: Path | None = Field(
        None,
        description="Folder of the BM25 indexes (one per collection). Unset: persist_dir/twostage-lexical for an "
        "embedded store, ./.twostage/lexical/<host>-<port> for a server, in memory for the in-memory store; empty "
        "means unset. The folder must be new, empty or the library's own: one holding other files is refused.",
    )
    lexical_refresh_s: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="How stale a long-lived retriever's BM25 side may be: it reads Chroma's change feed at most this "
        "often before a query (0: before every query).",
    )

    # Stage-2 speed.
    rerank_backend: BackendSetting = Field(
        "auto",
        description="Cross-encoder runtime: 'auto' (the fastest that ranks like fp32 here: fp16 on CUDA; on a CPU "
        "bf16 where computed natively and onnx-int8 where the onnx extra is installed; each kept only if a "
        "calibration agrees and it is faster; else fp32), 'torch' (fp32), "
        "'torch-bf16' / 'torch-fp16' (half precision), 'onnx' (ONNX Runtime fp32) or 'onnx-int8' (int8); the onnx "
        "ones need the 'onnx' extra. 'http': a rerank server at rerank_url scores the pairs (rerank_model is the "
        "model name sent to it).",
    )
    model_cache_dir: Path = Field(
        Path("./.twostage/models"), description="Where ONNX exports of the cross-encoder are written once and reused."
    )
    score_cache_size: int = Field(
        50_000, ge=0, description="Cross-encoder scores kept per process, so no pair is scored twice; 0 disables."
    )
    cascade_k: int | None = Field(
        None,
        gt=0,
        description="Off when unset. Otherwise a cheaper scorer (cascade_backend / cascade_max_length) reads all "
        "recall_k candidates and only its best cascade_k reach the full cross-encoder.",
    )
    cascade_backend: RerankBackend | None = Field(
        None, description="Backend of the cascade's cheap scorer; unset uses rerank_backend."
    )
    cascade_max_length: int | None = Field(
        None, gt=0, description="Token window of the cascade's cheap scorer; unset uses max_length."
    )

    # Stage 2 on a rerank server (rerank_backend='http'; README "Scaling stage 2").
    rerank_url: str | None = Field(
        None,
        description="Full endpoint URL of the rerank server, path included (servers differ), e.g. "
        "'http://127.0.0.1:7997/rerank'; several, comma-separated (or a list), are replicas of one model: requests "
        "spread across them and one that fails rests rerank_cooldown_s.",
    )
    rerank_api: RerankApi = Field(
        "cohere",
        description="Request and response schema: 'cohere' (Cohere, Jina, Infinity, vLLM, Xinference, LiteLLM) or "
        "'tei' (Hugging Face text-embeddings-inference).",
    )
    rerank_api_key: SecretStr | None = Field(
        None, description="Bearer token for the rerank server; never printed, logged or echoed in errors."
    )
    rerank_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Bound on one rerank request, the whole answer included; a call ends within (rerank_retries + 1) "
        "x rerank_timeout_s, retries and their waits included.",
    )
    rerank_retries: int = Field(
        2, ge=0, description="Retries of a rerank request that failed in transport or got 429/503; 0: none."
    )
    rerank_retry_backoff_s: float = Field(
        0.5,
        ge=0,
        allow_inf_nan=False,
        description="Wait before the first retry, doubling on each; a Retry-After header wins (either at most "
        "rerank_timeout_s).",
    )
    rerank_max_documents: int = Field(
        32,
        gt=0,
        description="Documents per rerank request; longer candidate lists are split and merged in order (TEI "
        "accepts 32 by default, Cohere 1,000).",
    )
    rerank_max_concurrency: int = Field(
        16, gt=0, description="Rerank requests in flight at once: for sync callers, and for each event loop."
    )
    rerank_cooldown_s: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        description="How long a rerank server replica that failed is skipped while the others serve.",
    )
    rerank_max_response_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="The most bytes of one rerank answer read, after decompression; a larger answer is an error.",
    )

    # What the cross-encoder reads (README "What the reranker reads").
    rerank_metadata_keys: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Metadata keys the cross-encoder reads before each candidate's text, in this order (in the "
        "environment: comma-separated). Unset: the text the bi-encoder embedded (its embed metadata included); "
        "[] (or an empty variable): the text alone.",
    )
    rerank_metadata_template: str = Field("{key}: {value}", description="Format of one metadata entry.")
    rerank_metadata_separator: str = Field("\n", description="Between metadata entries.")
    rerank_query_template: str = Field(
        "{query}", description="What the cross-encoder reads as the query, e.g. an instruction prefix."
    )
    rerank_document_template: str = Field(
        "{document}", description="What it reads as the candidate: {document} is the metadata block and the text."
    )
    rerank_long_documents: LongDocuments = Field(
        "truncate",
        description="'truncate': a pair longer than the window is cut (and reported). 'max-window': a long candidate "
        "is split into overlapping windows that fit beside the query, each is scored, the best counts; every "
        "window is a pair scored.",
    )
    rerank_window_overlap: int = Field(
        32, ge=0, description="Tokens shared by consecutive windows in 'max-window' mode."
    )
    rerank_relevant_class: int | None = Field(
        None,
        ge=0,
        description="For a cross-encoder with several outputs per pair: the index of the 'relevant' class. Unset: "
        "1 for two-output heads; heads with more outputs need it.",
    )

    # Throughput.
    embed_batch_size: int = Field(32, gt=0, description="Texts per bi-encoder batch.")
    rerank_batch_size: int = Field(32, gt=0, description="Pairs per cross-encoder batch.")
    upsert_batch_size: int = Field(1000, gt=0, description="Records per Chroma upsert (capped by the client).")

    # Ingestion.
    chunk_size: int = Field(512, gt=0, description="SentenceSplitter chunk size, in tokens.")
    chunk_overlap: int = Field(64, ge=0, description="SentenceSplitter overlap, in tokens.")
    splitter: str = Field(
        "sentence",
        description="How documents are chunked: 'sentence' (SentenceSplitter, chunk_size/chunk_overlap), 'markdown' "
        "(at headings, then sentences), 'code:LANG' (at syntax boundaries, e.g. code:python), 'semantic' (where "
        "consecutive sentences' embeddings diverge).",
    )
    show_progress: bool = Field(True, description="Show tqdm progress bars during ingestion.")

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        return _validate_collection_name(value)

    @field_validator("lexical_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """``TWOSTAGE_LEXICAL_DIR=`` means the default location, never the current folder."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("splitter")
    @classmethod
    def _known_splitter(cls, value: str) -> str:
        if value in ("sentence", "markdown", "semantic") or (value.startswith("code:") and value[5:].strip()):
            return value
        raise ValueError(f"unknown splitter {value!r}: choose {SPLITTERS}")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        if value in (None, "", "auto"):
            return None
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps', or leave it unset")
        return value

    @field_validator("embed_model", "rerank_model")
    @classmethod
    def _existing_model_dir(cls, value: str) -> str:
        if looks_like_local_path(value) and not Path(value).expanduser().is_dir():
            raise ValueError(
                f"model directory {value!r} does not exist: give an existing sentence-transformers directory "
                "or a hub id such as 'org/name'"
            )
        return value

    @field_validator("rerank_url", mode="before")
    @classmethod
    def _replicas_as_one_string(cls, value: Any) -> Any:
        """A TOML list of replicas, as the comma-separated string a variable gives."""
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value

    @field_validator("rerank_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        urls = [url.strip() for url in value.split(",")]
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"rerank_url {url!r} is not an http(s) URL: give e.g. 'http://127.0.0.1:7997/rerank'")
        if len(set(urls)) != len(urls):
            raise ValueError(f"rerank_url names a replica twice: {value!r}")
        return ",".join(urls)

    @property
    def rerank_urls(self) -> list[str]:
        """The rerank server's replicas (one URL, or several)."""
        return self.rerank_url.split(",") if self.rerank_url else []

    @field_validator("rerank_metadata_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``TWOSTAGE_RERANK_METADATA_KEYS=title,section`` (a JSON list works too)."""
        if isinstance(value, str):
            return (
                json.loads(value)
                if value.lstrip().startswith("[")
                else [k.strip() for k in value.split(",") if k.strip()]
            )
        return value

    @field_validator("rerank_metadata_keys")
    @classmethod
    def _metadata_keys(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_metadata_keys(value)

    @field_validator("rerank_query_template")
    @classmethod
    def _query_template(cls, value: str) -> str:
        return check_template(value, {"query"})

    @field_validator("rerank_document_template")
    @classmethod
    def _document_template(cls, value: str) -> str:
        return check_template(value, {"document"})

    @field_validator("rerank_metadata_template")
    @classmethod
    def _metadata_template(cls, value: str) -> str:
        return check_template(value, {"key", "value"}, required={"value"})

    @model_validator(mode="after")
    def _consistent(self) -> RetrieverSettings:
        if self.recall_k < self.top_k:
            raise ValueError(
                f"recall_k ({self.recall_k}) < top_k ({self.top_k}): the reranker can only return what stage 1 "
                "hands it; raise recall_k or lower top_k"
            )
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        if self.chroma_mode == "server" and not self.chroma_host:
            raise ValueError("chroma_mode 'server' needs chroma_host (and chroma_port)")
        if self.rerank_backend == "http" and not self.rerank_url:
            raise ValueError("rerank_backend 'http' needs rerank_url, e.g. 'http://127.0.0.1:7997/rerank'")
        if self.stage1_mode == "hybrid" and self.dense_weight + self.lexical_weight == 0:
            raise ValueError("dense_weight and lexical_weight are both 0: give at least one side a positive weight")
        return self

    @model_validator(mode="after")
    def _cascade_consistent(self) -> RetrieverSettings:
        if self.cascade_k is None:
            return self
        if self.cascade_k < self.top_k:
            raise ValueError(f"cascade_k ({self.cascade_k}) < top_k ({self.top_k}): the shortlist must hold top_k")
        if self.rerank_backend == "http" and self.cascade_backend is None:
            raise ValueError(
                "cascade_k with rerank_backend 'http' needs a local cheap scorer: set cascade_backend (e.g. "
                "'onnx-int8'); it loads rerank_model, so serve the model under that name"
            )
        cheap = (self.cascade_backend or self.rerank_backend, self.cascade_max_length or self.max_length)
        if cheap == (self.rerank_backend, self.max_length):
            raise ValueError(
                "cascade_k is set but the cascade scorer equals the reranker: set cascade_backend (e.g. 'onnx-int8') "
                "or a shorter cascade_max_length"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _host_selects_server(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("chroma_host"), str) and "://" in data["chroma_host"]:
            data = {**data, **split_server_url(data["chroma_host"], data)}
        if isinstance(data, dict) and data.get("chroma_host") and "chroma_mode" not in data:
            data = {**data, "chroma_mode": "server"}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then ``TWOSTAGE_*`` variables; no dotenv or secrets files (TOML: :meth:`from_toml`)."""
        return _TokenMasked(init_settings), _TokenMasked(env_settings)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> RetrieverSettings:
        """Settings from a TOML file of top-level keys; keyword arguments and ``TWOSTAGE_*`` env vars win.

        The file's values go in as keyword arguments, less those the environment sets, so the precedence holds and
        the result is a plain ``RetrieverSettings``, equal to the same settings built by keyword.
        """
        toml_file = Path(path).expanduser()
        if toml_file.is_dir():
            raise ConfigurationError(f"settings file {str(toml_file)!r} is a folder: give the path of a TOML file")
        if not toml_file.is_file():
            raise ConfigurationError(f"settings file {str(toml_file)!r} does not exist")
        try:
            from_file = TomlConfigSettingsSource(cls, toml_file=toml_file)()
        except ValueError as error:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
            raise ConfigurationError(f"settings file {str(toml_file)!r} is not valid TOML: {error}") from None
        from_env = EnvSettingsSource(cls)()
        return cls(**{**{key: value for key, value in from_file.items() if key not in from_env}, **overrides})

    @property
    def server_address(self) -> str:
        """``host:port`` of the Chroma server, for messages."""
        return f"{self.chroma_host}:{self.chroma_port}"

    def describe_stage1(self) -> str:
        """How stage 1 finds candidates, for ``twostage info`` and the demo."""
        if self.stage1_mode == "dense":
            return f"dense (recall_k={self.recall_k})"
        if self.stage1_mode == "lexical":
            return f"lexical: BM25 ({self.lexical_language}) (recall_k={self.recall_k})"
        return (
            f"hybrid: bi-encoder + BM25 ({self.lexical_language}) by reciprocal rank fusion (k={self.rrf_k:g}, "
            f"dense weight {self.dense_weight:g}, lexical weight {self.lexical_weight:g}), recall_k={self.recall_k}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings with the secrets masked: safe to log, print or write to a report."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrieverSettings:
        """Inverse of :meth:`to_dict` (a masked secret is dropped, never taken for the real one)."""
        masked = {name for name in SECRET_FIELDS if data.get(name) is not None and set(str(data[name])) == {"*"}}
        return cls(**{key: value for key, value in data.items() if key not in masked})
