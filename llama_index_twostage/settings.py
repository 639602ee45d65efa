"""``RetrieverSettings``: the whole pipeline in one validated object, composed of each component's own config.

Each component owns its configuration and the rules on it, defined beside it: :class:`ChromaConfig` (the store),
:class:`LexicalConfig` (BM25 on this host), :class:`FusionConfig` (hybrid stage 1), :class:`PairTemplate` (what the
cross-encoder reads), :class:`CascadeConfig` (the cheap first pass) and :class:`RerankServerConfig` (rerank
servers), the last and the store sharing one :class:`RetryPolicy`. ``RetrieverSettings`` composes them, keeps the
settings that belong to the pipeline as a whole (models, ``recall_k``, ``top_k``, batches, chunking) and checks the
rules that span components (``recall_k >= top_k``, a cascade that can help, an ``http`` backend with a URL).

Every setting keeps its one flat name (:data:`FLAT_NAMES`): ``RetrieverSettings(chroma_host=...)``, the
``TWOSTAGE_CHROMA_HOST`` variable and a TOML ``chroma_host = ...`` all set ``settings.chroma.host``; sections work
too (``chroma=ChromaConfig(...)``, or ``[chroma]`` in TOML). Values come from keyword arguments, then ``TWOSTAGE_*``
environment variables, then an optional TOML file (:meth:`RetrieverSettings.from_toml`), in that order.

Only the factory (``pipeline.py``), the CLI and the evaluation read this module; no component imports it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import tomllib
from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llama_index_twostage.embed_backends import EmbedBackendSetting
from llama_index_twostage.errors import ConfigurationError
from llama_index_twostage.ingest.transform import Chunking, check_splitter
from llama_index_twostage.models import DEFAULT_CACHE_DIR, looks_like_local_path
from llama_index_twostage.stage1.fusion import FusionConfig, Stage1Mode
from llama_index_twostage.stage2.backends import BackendSetting
from llama_index_twostage.stage2.http import RerankServerConfig
from llama_index_twostage.stage2.rerank import CascadeConfig, LongDocuments
from llama_index_twostage.stage2.templates import PairTemplate
from llama_index_twostage.store.chroma import ChromaConfig, CollectionName
from llama_index_twostage.store.generations import LexicalConfig

_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu|npu)(:\d+)?)$")

SECTIONS = ("chroma", "lexical", "fusion", "pair_template", "cascade", "rerank_server")
FLAT_NAMES: dict[str, tuple[str, ...]] = {
    "chroma_mode": ("chroma", "mode"),
    "persist_dir": ("chroma", "persist_dir"),
    "chroma_host": ("chroma", "host"),
    "chroma_port": ("chroma", "port"),
    "chroma_ssl": ("chroma", "ssl"),
    "chroma_token": ("chroma", "token"),
    "chroma_timeout_s": ("chroma", "timeout_s"),
    "chroma_retries": ("chroma", "retry", "retries"),
    "chroma_retry_backoff_s": ("chroma", "retry", "backoff_s"),
    "distance_space": ("chroma", "distance_space"),
    "hnsw_ef_search": ("chroma", "hnsw", "ef_search"),
    "hnsw_ef_construction": ("chroma", "hnsw", "ef_construction"),
    "hnsw_max_neighbors": ("chroma", "hnsw", "max_neighbors"),
    "lexical_language": ("lexical", "language"),
    "lexical_dir": ("lexical", "dir"),
    "lexical_refresh_s": ("lexical", "refresh_s"),
    "rrf_k": ("fusion", "rrf_k"),
    "dense_weight": ("fusion", "dense_weight"),
    "lexical_weight": ("fusion", "lexical_weight"),
    "rerank_metadata_keys": ("pair_template", "metadata_keys"),
    "rerank_metadata_template": ("pair_template", "metadata_template"),
    "rerank_metadata_separator": ("pair_template", "metadata_separator"),
    "rerank_query_template": ("pair_template", "query_template"),
    "rerank_document_template": ("pair_template", "document_template"),
    "cascade_k": ("cascade", "k"),
    "cascade_backend": ("cascade", "backend"),
    "cascade_max_length": ("cascade", "max_length"),
    "rerank_url": ("rerank_server", "urls"),
    "rerank_api": ("rerank_server", "api"),
    "rerank_api_key": ("rerank_server", "api_key"),
    "rerank_timeout_s": ("rerank_server", "timeout_s"),
    "rerank_retries": ("rerank_server", "retry", "retries"),
    "rerank_retry_backoff_s": ("rerank_server", "retry", "backoff_s"),
    "rerank_max_documents": ("rerank_server", "max_documents"),
    "rerank_max_concurrency": ("rerank_server", "max_concurrency"),
    "rerank_cooldown_s": ("rerank_server", "cooldown_s"),
    "rerank_max_response_bytes": ("rerank_server", "max_response_bytes"),
}
"""Each setting of a section by its flat name: the keyword argument, ``TWOSTAGE_*`` variable and TOML key."""

SECRET_PATHS = (("chroma", "token"), ("rerank_server", "api_key"))


def _check_model(model: str) -> str:
    if looks_like_local_path(model) and not Path(model).expanduser().is_dir():
        raise ValueError(
            f"model directory {model!r} does not exist: give an existing sentence-transformers directory "
            "or a hub id such as 'org/name'"
        )
    return model


ModelName = Annotated[str, AfterValidator(_check_model)]


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The dict at ``path`` in ``data``, created where missing (a section given as a model is opened as a dict)."""
    for part in path:
        inner = data.get(part)
        if hasattr(inner, "model_dump"):
            inner = inner.model_dump(exclude_unset=True)
        data[part] = dict(inner or {})
        data = data[part]
    return data


def sectioned(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every flat name moved into its section, secrets as ``SecretStr`` (pydantic's errors echo
    the raw input of every source otherwise). A setting given both flat and in its section is refused."""
    data = dict(values)
    for name, path in FLAT_NAMES.items():
        if name not in data:
            continue
        *parents, field = path
        section = _dig(data, tuple(parents))
        if field in section:
            raise ConfigurationError(f"{name} is given twice, flat and as {'.'.join(path)}: give one")
        section[field] = data.pop(name)
    for *parents, field in SECRET_PATHS:
        section = data.get(parents[0])
        if isinstance(section, dict) and isinstance(section.get(field), str):
            data[parents[0]] = {**section, field: SecretStr(section[field])}  # a copy: the caller's dict stays
    return data


def deep_merge(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by each of ``overrides`` in turn, section by section (a later value wins)."""
    merged = dict(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def flat_name(loc: tuple[int | str, ...]) -> str:
    """A validation error's location by the flat name a user wrote (``chroma.retry.retries`` -> chroma_retries)."""
    for name, path in FLAT_NAMES.items():
        if tuple(loc[: len(path)]) == path:
            return ".".join([name, *map(str, loc[len(path) :])])
    return ".".join(map(str, loc))


def by_flat_names(error: ValidationError) -> ValidationError:
    """``error`` with each location written as the flat name a user gives (``chroma_port``, not ``chroma.port``)."""
    details = [
        {"type": item["type"], "loc": (name,) if (name := flat_name(item["loc"])) else (), "input": item["input"]}
        | ({"ctx": item["ctx"]} if "ctx" in item else {})
        for item in error.errors()
    ]
    return ValidationError.from_exception_data(error.title, details, hide_input=True)  # type: ignore[arg-type]


class _Sectioned(PydanticBaseSettingsSource):
    """Keyword arguments, flat names moved into their sections."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self.source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return sectioned(self.source())


class _FlatEnvironment(PydanticBaseSettingsSource):
    """``TWOSTAGE_<FLAT NAME>`` variables (any case), one per setting, moved into their sections."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        names = {name for name in self.settings_cls.model_fields if name not in SECTIONS} | set(FLAT_NAMES)
        wanted = {f"TWOSTAGE_{name.upper()}": name for name in names}
        return sectioned({wanted[key.upper()]: value for key, value in os.environ.items() if key.upper() in wanted})


class RetrieverSettings(BaseSettings):
    """Configuration of stage 1 (bi-encoder over Chroma, BM25 beside it), stage 2 (cross-encoder) and ingestion.

    Model fields take a Hugging Face hub id or a local sentence-transformers directory. Settings of a section are
    read as ``settings.chroma.host``, or by their flat name (``settings.chroma_host``); :meth:`replace` makes a
    changed, validated copy.
    """

    model_config = SettingsConfigDict(
        env_prefix="TWOSTAGE_",
        extra="forbid",
        validate_default=True,
        frozen=True,
        # Validation errors would otherwise echo every input, the Chroma token included.
        hide_input_in_errors=True,
    )

    # The components' own configurations.
    collection: CollectionName = Field("twostage", description="Chroma collection name (Chroma's naming rules apply).")
    chroma: ChromaConfig = Field(default_factory=ChromaConfig, description="Where the vectors live.")
    lexical: LexicalConfig = Field(default_factory=LexicalConfig, description="BM25 on this host.")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="How hybrid stage 1 fuses its sides.")
    pair_template: PairTemplate = Field(
        default_factory=PairTemplate, description="What the cross-encoder reads (README 'What the reranker reads')."
    )
    cascade: CascadeConfig = Field(default_factory=CascadeConfig, description="An optional cheap first pass.")
    rerank_server: RerankServerConfig = Field(
        default_factory=RerankServerConfig, description="Rerank servers (rerank_backend='http'; README 'Scaling')."
    )

    # Models.
    embed_model: ModelName = Field("sentence-transformers/all-MiniLM-L6-v2", description="Bi-encoder for stage 1.")
    embed_backend: EmbedBackendSetting = Field(
        "auto",
        description="Bi-encoder runtime, for ingestion and queries alike: 'auto' (the fastest that searches like fp32 "
        "here: native half precision, and on a CPU onnx / onnx-int8 where the onnx extra is installed and "
        "openvino (and openvino-bf16 where bf16 is native) where the openvino extra is; each kept only if a "
        "calibration agrees and it is faster; else fp32), 'torch' (fp32), 'torch-bf16' / 'torch-fp16', 'onnx', "
        "'onnx-int8', 'openvino' (OpenVINO fp32) or 'openvino-bf16'. Recorded in the collection; another precision "
        "may read or write it only within the calibration's tolerance.",
    )
    rerank_model: ModelName = Field("cross-encoder/ms-marco-MiniLM-L6-v2", description="Cross-encoder for stage 2.")
    device: str | None = Field(None, description="'cpu', 'cuda', 'cuda:N', 'mps'; unset picks automatically.")
    trust_remote_code: bool = Field(False, description="Run model code from the hub. Off unless you trust it.")

    # The two stages.
    recall_k: int = Field(100, gt=0, description="Candidates stage 1 hands to the reranker.")
    top_k: int = Field(5, gt=0, description="Results after reranking.")
    stage1_mode: Stage1Mode = Field(
        "hybrid",
        description="'hybrid' (default: bi-encoder and BM25 candidates fused by reciprocal rank; more relevant "
        "documents in the same recall_k), 'dense' (bi-encoder alone) or 'lexical' (BM25 alone).",
    )
    recall_guard: bool = Field(False, description="Warn when a query looks recall-starved (see recall_guard_gap).")
    recall_guard_gap: float = Field(
        0.05,
        gt=0,
        allow_inf_nan=False,
        description="The guard fires when the cosine at rank recall_k is within this of the top cosine: the "
        "candidates are still as similar as the best, so relevant ones likely lie beyond recall_k.",
    )
    max_length: int | None = Field(
        None, gt=0, description="Token window of the cross-encoder; longer pairs are truncated and reported."
    )
    normalize_scores: bool = Field(False, description="Return reranker scores in 0-1 (sigmoid of logits).")
    score_threshold: float | None = Field(
        None, allow_inf_nan=False, description="Drop reranked nodes scoring below this."
    )

    # Stage-2 speed.
    rerank_backend: BackendSetting = Field(
        "auto",
        description="Cross-encoder runtime: 'auto' (the fastest that ranks like fp32 here: fp16 on CUDA; on a CPU "
        "bf16 where computed natively, onnx and onnx-int8 where the onnx extra is installed, and openvino (and "
        "openvino-bf16 where bf16 is native) where the openvino extra is; each kept only if a calibration agrees "
        "and it is faster; else fp32), 'torch' (fp32), 'torch-bf16' / 'torch-fp16' (half "
        "precision), 'onnx' (ONNX Runtime fp32, fused graph, pair by pair), 'onnx-int8' (int8, dynamic, pair by "
        "pair), 'openvino' / 'openvino-bf16' (OpenVINO on the CPU at fp32 / bf16, the same fused graph), "
        "'openvino-int8' (OpenVINO on the CPU, static int8 quantized by NNCF, batched); the onnx ones need the "
        "'onnx' extra, the openvino ones the 'openvino' extra. 'http': a rerank server at rerank_url scores the "
        "pairs (rerank_model is the model name sent to it).",
    )
    model_cache_dir: Path = Field(
        DEFAULT_CACHE_DIR,
        description="Where ONNX exports of both encoders, and auto's runtime decisions, are written once and reused.",
    )
    score_cache_size: int = Field(
        50_000, ge=0, description="Cross-encoder scores kept per process, so no pair is scored twice; 0 disables."
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
    rerank_batch_tokens: int | None = Field(
        None,
        gt=0,
        description="Tokens per cross-encoder batch, padding included; unset: 1024 on a CPU (padding costs in full "
        "there), no limit on a GPU.",
    )
    upsert_batch_size: int = Field(1000, gt=0, description="Records per Chroma upsert (capped by the client).")

    # Ingestion.
    chunk_size: int = Field(512, gt=0, description="SentenceSplitter chunk size, in tokens.")
    chunk_overlap: int = Field(64, ge=0, description="SentenceSplitter overlap, in tokens.")
    splitter: Annotated[str, AfterValidator(check_splitter)] = Field(
        "sentence",
        description="How documents are chunked: 'sentence' (SentenceSplitter, chunk_size/chunk_overlap), 'markdown' "
        "(at headings, then sentences), 'code:LANG' (at syntax boundaries, e.g. code:python), 'semantic' (where "
        "consecutive sentences' embeddings diverge).",
    )
    show_progress: bool = Field(True, description="Show tqdm progress bars during ingestion.")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise by_flat_names(error) from None

    @classmethod
    def model_validate(cls, obj: Any, **options: Any) -> RetrieverSettings:  # type: ignore[override]
        try:
            return super().model_validate(obj, **options)
        except ValidationError as error:
            raise by_flat_names(error) from None

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Flat names given to :meth:`model_validate` (the constructor's sources have moved them already)."""
        return sectioned(data) if isinstance(data, dict) else data

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        if value in (None, "", "auto"):
            return None
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps', or leave it unset")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RetrieverSettings:
        """The rules that span components (each component checks its own)."""
        if self.recall_k < self.top_k:
            raise ValueError(
                f"recall_k ({self.recall_k}) < top_k ({self.top_k}): the reranker can only return what stage 1 "
                "hands it; raise recall_k or lower top_k"
            )
        if self.rerank_backend == "http" and not self.rerank_server.urls:
            raise ValueError("rerank_backend 'http' needs rerank_url, e.g. 'http://127.0.0.1:7997/rerank'")
        self.cascade.check(self.top_k, self.rerank_backend, self.max_length)
        Chunking(self.chunk_size, self.chunk_overlap)
        return self

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
        return _Sectioned(init_settings), _FlatEnvironment(settings_cls)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> RetrieverSettings:
        """Settings from a TOML file of flat keys and/or ``[section]`` tables; keyword arguments and ``TWOSTAGE_*``
        variables win, setting by setting."""
        toml_file = Path(path).expanduser()
        if toml_file.is_dir():
            raise ConfigurationError(f"settings file {str(toml_file)!r} is a folder: give the path of a TOML file")
        if not toml_file.is_file():
            raise ConfigurationError(f"settings file {str(toml_file)!r} does not exist")
        try:
            from_file = tomllib.loads(toml_file.read_text(encoding="utf-8"))
        except ValueError as error:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
            raise ConfigurationError(f"settings file {str(toml_file)!r} is not valid TOML: {error}") from None
        from_env = _FlatEnvironment(cls)()
        return cls(**deep_merge(sectioned(from_file), from_env, sectioned(overrides)))

    def replace(self, **changes: Any) -> RetrieverSettings:
        """A copy with these settings changed (flat names or sections), validated again like new settings."""
        given = self.model_dump(exclude_unset=True)
        return type(self).model_validate(deep_merge(given, sectioned(changes)))

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> RetrieverSettings:
        """pydantic's copy; with ``update``, :meth:`replace` (flat names work, and the result is validated)."""
        return self.replace(**update) if update else super().model_copy(deep=deep)

    def __getattr__(self, name: str) -> Any:
        """A section's setting by its flat name: ``settings.chroma_host`` is ``settings.chroma.host``."""
        path = FLAT_NAMES.get(name)
        if path is None:
            return super().__getattr__(name)  # type: ignore[misc]
        value: Any = self
        for part in path:
            value = getattr(value, part)
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings by their flat names, secrets masked: safe to log, print or write to a report."""
        nested = self.model_dump(mode="json")
        flat = {name: value for name, value in nested.items() if name not in SECTIONS}
        for name, path in FLAT_NAMES.items():
            value: Any = nested
            for part in path:
                value = value[part]
            flat[name] = value
        return flat

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrieverSettings:
        """Inverse of :meth:`to_dict` (a masked secret is dropped, never taken for the real one)."""
        given = sectioned(data)
        for *parents, field in SECRET_PATHS:
            section = given.get(parents[0])
            secret = section.get(field) if isinstance(section, dict) else None
            if isinstance(secret, SecretStr) and set(secret.get_secret_value()) == {"*"}:
                del section[field]
        return cls(**given)
