"""Bi-encoder runtimes, and ``embed_backend="auto"``: the fastest that still searches like fp32 on this machine.

Stage 1 is a nearest-neighbour search, so a backend is judged by what it retrieves, not by how close its vectors are
to fp32's. ``auto`` embeds a calibration corpus (240 texts of one, six or twelve passages, 7 to 227 words, 100 on
average, built from the passages of ``stage2/calibration.json``: no dataset text) and 30 queries with fp32 and with
each candidate the machine offers (its native half precision, see
:meth:`~llama_index_twostage.stage2.auto.Hardware.native_half_precision`; on a CPU ``onnx`` and ``onnx-int8`` where the
``onnx`` extra is installed, and OpenVINO at fp32 and, where bf16 is native, at bf16, where the ``openvino`` extra
is), searches exactly, and keeps the fastest that holds fp32's search (a mean top-100 overlap of at least 0.99, and
every query the same nearest text: the top-1 guard of the cross-encoder's calibration) and takes at most 0.9x fp32's
time. The corpus is embedded in ``embed_batch_size`` batches, as ingestion embeds, and each query alone, as a query
is: a runtime whose vectors depend on their batch neighbours (dynamic int8) is measured as it is used.

A collection records the backend that wrote it. Another backend may read or write it only when the pair passes the
same test both ways (its queries on the writer's vectors, and the writer's queries on its vectors): measured once
per pair and machine, or taken from ``auto``'s calibration, which measures every pair it embedded. Decisions and
ONNX exports live in ``model_cache_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from llama_index_twostage.models import ModelPool, load_or_explain, sentence_transformer_of
from llama_index_twostage.stage2.auto import (
    MAX_TIME_RATIO,
    Hardware,
    candidate_backends,
    resolved_device,
    untried_extras,
)
from llama_index_twostage.stage2.backends import (
    DecisionFile,
    OpenVinoGraph,
    cached_export,
    cpu_session,
    export_dir,
    export_fused,
    installed,
    is_openvino,
    quantize_int8,
    require_cpu,
    require_runtime,
    runs_an_export,
    torch_model_kwargs,
    weights_fingerprint,
)
from llama_index_twostage.stage2.calibration import calibration_set

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# fp32, half, ONNX Runtime fp32 and int8, OpenVINO fp32 and bf16
EmbedBackend = Literal["torch", "torch-bf16", "torch-fp16", "onnx", "onnx-int8", "openvino", "openvino-bf16"]
EmbedBackendSetting = Literal[
    "auto", "torch", "torch-bf16", "torch-fp16", "onnx", "onnx-int8", "openvino", "openvino-bf16"
]
TOP_N = 100
MIN_TOP_OVERLAP = 0.99
DECISIONS_FILE = "embed-backend.json"
OUTPUT = "last_hidden_state"
_JOINED = ((6, 2), (12, 1))  # texts of that many passages, one per that many passages of a topic
_ONNX_FILES = {"onnx": "encoder_fused_r1.onnx", "onnx-int8": "encoder_int8_r2.onnx"}  # a new recipe, a new name


@dataclass(frozen=True)
class Calibration:
    """Queries searched over a corpus, the depth at which fp32's results must be kept, and how well."""

    queries: list[str]
    corpus: list[str]
    top_n: int = TOP_N
    min_top_overlap: float = MIN_TOP_OVERLAP

    @classmethod
    def default(cls) -> Calibration:
        """The shipped set: the cross-encoder's calibration queries plus the opening words of every fourth passage;
        each topic's passages alone and joined by 6 and by 12 (SciFact's length, about 200 words: most of the time
        is spent where ingestion spends it, on documents, since a runtime's gain depends on the length), so the
        texts near rank 100 nearly tie."""
        rng = random.Random(0)
        queries, corpus = [], []
        for query, passages in calibration_set():
            queries += [query, *(" ".join(passage.split()[:10]) for passage in passages[::4])]
            corpus += passages
            for size, share in _JOINED:
                corpus += [" ".join(rng.sample(passages, size)) for _ in range(len(passages) // share)]
        return cls(queries, corpus)

    def fingerprint(self) -> str:
        """Part of every stored measurement's key: another calibration set measures again (a threshold is applied
        to stored measurements when read)."""
        texts = json.dumps([self.queries, self.corpus, self.top_n])
        return hashlib.sha256(texts.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SearchAgreement:
    """How a search (queries of one backend on vectors of another) compares with fp32's on the calibration set."""

    top_overlap: float
    same_nearest: int
    queries: int
    top_n: int = TOP_N
    min_top_overlap: float = MIN_TOP_OVERLAP

    @property
    def passes(self) -> bool:
        return self.top_overlap >= self.min_top_overlap and self.same_nearest == self.queries

    def __str__(self) -> str:
        return f"top-{self.top_n} overlap {self.top_overlap:.3f}, same nearest {self.same_nearest}/{self.queries}"


@dataclass(frozen=True)
class Embedded:
    """One backend's calibration vectors, and the seconds it took to embed them."""

    queries: np.ndarray
    corpus: np.ndarray
    seconds: float


def _top(queries: np.ndarray, corpus: np.ndarray, top_n: int) -> np.ndarray:
    return np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :top_n]


def search_agreement(
    reference: Embedded, queries: np.ndarray, corpus: np.ndarray, calibration: Calibration
) -> SearchAgreement:
    """Exact search of ``queries`` over ``corpus`` against fp32's search (``reference``)."""
    top_n = calibration.top_n
    expected, got = _top(reference.queries, reference.corpus, top_n), _top(queries, corpus, top_n)
    overlaps = [len(set(row) & set(other)) / top_n for row, other in zip(expected, got, strict=True)]
    same = int(sum(row[0] == other[0] for row, other in zip(expected, got, strict=True)))
    return SearchAgreement(float(np.mean(overlaps)), same, len(overlaps), top_n, calibration.min_top_overlap)


@dataclass(frozen=True)
class EmbedChoice:
    """The backend ``auto`` chose and why, for logs and ``twostage info``."""

    backend: EmbedBackend
    reason: str


class BackendEmbedding(HuggingFaceEmbedding):
    """A LlamaIndex ``HuggingFaceEmbedding`` that knows its runtime, so a collection can record it and a reader
    on another runtime can ask whether it may search that collection."""

    embed_backend: str = Field("torch", description="The runtime computing the vectors (see RetrieverSettings).")
    backend_reason: str = Field("as set", description="Why this runtime: 'as set', or auto's measurements.")
    _backends: EmbedBackends | None = PrivateAttr(None)

    def __init__(self, *, embed_backend: str = "torch", backend_reason: str = "as set", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed_backend = embed_backend
        self.backend_reason = backend_reason

    def tolerance(self, writer: str) -> tuple[bool, str]:
        """Whether this runtime may search (and add to) a collection written by ``writer``, and the measurement."""
        if writer == self.embed_backend:
            return True, "same backend"
        if self._backends is None:
            return False, "not measured (this embedding was not built by the library)"
        try:
            return self._backends.compatible(self.embed_backend, writer, self)  # type: ignore[arg-type]
        except (ImportError, ValueError, KeyError) as error:
            return False, f"cannot be measured here ({type(error).__name__}: {error})"


class OnnxEncoder(torch.nn.Module):
    """Stands in for the transformers encoder inside a ``SentenceTransformer``: same inputs, the token embeddings
    out, so tokenisation, length-sorted batching, pooling and normalisation stay sentence-transformers' own."""

    def __init__(self, path: Path, config: Any) -> None:
        super().__init__()
        self.session = cpu_session(path)
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.config = config

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        (hidden,) = self.session.run([OUTPUT], {name: features[name].cpu().numpy() for name in self.input_names})
        return {OUTPUT: torch.from_numpy(hidden)}


def _export(encoder: SentenceTransformer, target: Path) -> None:
    """The encoder in ONNX, fused where the fusion keeps its token embeddings on calibration texts."""
    sample = encoder.tokenizer(["a sample text"], return_tensors="pt")
    check = [
        {
            name: ids.astype(np.int64)
            for name, ids in encoder.tokenizer(text, truncation=True, return_tensors="np").items()
        }
        for text in Calibration.default().corpus[:2]
    ]
    export_fused(encoder[0].model, sample, (OUTPUT, {0: "batch", 1: "tokens"}), check, target)


def exported_encoder(encoder: SentenceTransformer, model: str, backend: EmbedBackend, cache_dir: Path) -> Path:
    """The ONNX file of ``backend``, exported (and quantized) on first use and reused from the cache afterwards."""
    export = partial(_export, encoder)
    return cached_export(
        export_dir(cache_dir, model), _ONNX_FILES, backend, export, {"onnx-int8": quantize_int8}, model
    )


class EmbedBackends:
    """Loads one bi-encoder on any runtime and measures runtimes against fp32 on this machine (decisions stored in
    ``cache_dir``). Holds no model: each load is handed to the caller, calibration's extra loads are dropped."""

    def __init__(
        self,
        model: str,
        *,
        device: str | None,
        batch_size: int,
        trust_remote_code: bool,
        cache_dir: Path,
        calibration: Calibration | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.cache_dir = Path(cache_dir).expanduser()
        self.calibration = calibration or Calibration.default()
        self._embedded: dict[str, Embedded] = {}

    def load(self, backend: EmbedBackend, reason: str = "as set") -> BackendEmbedding:
        """The bi-encoder on ``backend``; ONNX Runtime and OpenVINO ones export on first use (CPU only)."""
        exported = runs_an_export(backend)
        if exported:
            require_runtime(backend, "embed_backend")
            require_cpu(backend, self.device, "embed_backend")
        logger.info("loading embedding model %s (%s)", self.model, backend)
        embedding = BackendEmbedding(
            model_name=self.model,
            device="cpu" if exported else self.device,
            embed_batch_size=self.batch_size,
            trust_remote_code=self.trust_remote_code,
            normalize=True,
            model_kwargs=torch_model_kwargs(backend),
            embed_backend=backend,
            backend_reason=reason,
        )
        if exported:
            encoder = sentence_transformer_of(embedding)
            path, config = exported_encoder(encoder, self.model, backend, self.cache_dir), encoder[0].model.config
            openvino = is_openvino(backend)
            encoder[0].model = OpenVinoGraph(path, config, OUTPUT, backend) if openvino else OnnxEncoder(path, config)
        embedding._backends = self
        return embedding

    def _machine(self) -> tuple[str, str, list[EmbedBackend]]:
        """This machine's part of a decision's key, its hardware in words, and what ``auto`` may try here."""
        device = resolved_device(self.device)
        candidates, hardware = candidate_backends(Hardware.detect(device), installed("onnx"), installed("openvino"))
        calibration = self.calibration.fingerprint()
        key = "|".join([weights_fingerprint(self.model), device, hardware, torch.__version__, calibration])
        return key, hardware, candidates

    def auto(self) -> BackendEmbedding:
        """The bi-encoder on the fastest runtime that searches like fp32 here (a stored decision, else measured)."""
        machine, hardware, candidates = self._machine()
        untried = untried_extras(resolved_device(self.device), candidates)
        if not candidates:
            return self.load("torch", f"fp32: no native half precision on {hardware}{untried}")
        decisions = DecisionFile(self.cache_dir / DECISIONS_FILE, "an embed_backend measurement")
        key = f"{machine}|auto:{','.join(candidates)}|{self.calibration.min_top_overlap}"
        stored = decisions.get(key)
        if stored is not None:
            return self.load(stored["backend"], stored["reason"])
        logger.info("embed_backend auto: calibrating %s on %s (once per model and machine)", candidates, hardware)
        loaded = {backend: self.load(backend) for backend in ["torch", *candidates]}
        seconds = self._embed_in_turns(loaded)
        self._store_pairs(decisions, machine)
        measured = self._choose({backend: seconds[backend] for backend in candidates}, seconds["torch"], hardware)
        choice = EmbedChoice(measured.backend, measured.reason + untried)
        decisions.put({key: asdict(choice)})
        chosen = loaded[choice.backend]  # the others are dropped here
        chosen.backend_reason = choice.reason
        return chosen

    def _choose(self, timings: dict[EmbedBackend, float], fp32_s: float, hardware: str) -> EmbedChoice:
        trials = {backend: (self._agreement(backend, backend), spent / fp32_s) for backend, spent in timings.items()}
        measured = "; ".join(f"{b}: {agreement}, {ratio:.2f}x fp32's time" for b, (agreement, ratio) in trials.items())
        earning = [b for b, (agreement, ratio) in trials.items() if agreement.passes and ratio <= MAX_TIME_RATIO]
        if not earning:
            return EmbedChoice("torch", f"fp32: nothing faster searches like it on {hardware} ({measured})")
        best = min(earning, key=lambda backend: trials[backend][1])
        return EmbedChoice(best, f"{best}: fastest that searches like fp32 on {hardware} ({measured})")

    def _embed_in_turns(self, embeddings: dict[str, BackendEmbedding]) -> dict[str, float]:
        """Embed the calibration set with each runtime (after a warm-up each), taking turns slice by slice so that a
        change in background load hits all alike: the corpus in batches, as ingestion embeds, each query alone, as
        a query is. Keeps the vectors for the pairs; returns each runtime's seconds."""
        corpus, queries, step = self.calibration.corpus, self.calibration.queries, 4 * self.batch_size
        turns = [(True, corpus[start : start + step]) for start in range(0, len(corpus), step)]
        turns += [(False, [query]) for query in queries]
        seconds = dict.fromkeys(embeddings, 0.0)
        vectors: dict[str, tuple[list, list]] = {backend: ([], []) for backend in embeddings}
        for embedding in embeddings.values():
            embedding.get_query_embedding(queries[0])
        for is_corpus, texts in turns:  # the corpus's vectors go to vectors[backend][1], queries' to [0]
            for backend, embedding in embeddings.items():
                start = time.perf_counter()
                got = (
                    embedding.get_text_embedding_batch(texts)
                    if is_corpus
                    else [embedding.get_query_embedding(texts[0])]
                )
                seconds[backend] += time.perf_counter() - start
                vectors[backend][is_corpus].extend(got)
        for backend, (query_vectors, corpus_vectors) in vectors.items():
            self._embedded[backend] = Embedded(np.asarray(query_vectors), np.asarray(corpus_vectors), seconds[backend])
        return seconds

    def _agreement(self, reader: str, writer: str) -> SearchAgreement:
        queries, corpus = self._embedded[reader].queries, self._embedded[writer].corpus
        return search_agreement(self._embedded["torch"], queries, corpus, self.calibration)

    def _store_pairs(self, decisions: DecisionFile, machine: str) -> None:
        """Record every reader/writer pair among the runtimes embedded so far."""
        pairs = [(reader, writer) for reader in self._embedded for writer in self._embedded]
        decisions.put({f"{machine}|{r}>{w}": asdict(self._agreement(r, w)) for r, w in pairs})

    def compatible(self, reader: EmbedBackend, writer: EmbedBackend, loaded: BackendEmbedding) -> tuple[bool, str]:
        """Whether ``reader`` and ``writer`` search each other's vectors like fp32, both ways (stored, else measured
        with fp32 and ``writer`` loaded for the purpose), and the measurement in words."""
        machine, _, _ = self._machine()
        decisions = DecisionFile(self.cache_dir / DECISIONS_FILE, "an embed_backend measurement")
        keys = [f"{machine}|{reader}>{writer}", f"{machine}|{writer}>{reader}"]
        if any(decisions.get(key) is None for key in keys):
            logger.info("measuring embed_backend %s against a collection written with %s (once)", reader, writer)
            missing = {"torch", reader, writer} - self._embedded.keys()
            self._embed_in_turns({b: loaded if b == reader else self.load(b) for b in missing})  # type: ignore[arg-type]
            self._store_pairs(decisions, machine)
        threshold = {"min_top_overlap": self.calibration.min_top_overlap}
        both = [SearchAgreement(**{**decisions.get(key), **threshold}) for key in keys]  # type: ignore[dict-item]
        words = f"{reader} queries on {writer} vectors: {both[0]}; {writer} queries on {reader} vectors: {both[1]}"
        return all(agreement.passes for agreement in both), words


def pooled_embedding(
    pool: ModelPool,
    model: str,
    *,
    device: str | None,
    batch_size: int,
    trust_remote_code: bool,
    backend: EmbedBackendSetting,
    cache_dir: Path,
) -> BaseEmbedding:
    """The stage-1 bi-encoder as a LlamaIndex ``HuggingFaceEmbedding`` (normalised vectors) on ``backend`` (``auto``
    measures which), loaded once per pool."""

    def load() -> BaseEmbedding:
        backends = EmbedBackends(
            model, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code, cache_dir=cache_dir
        )
        return backends.auto() if backend == "auto" else backends.load(backend)

    key = ("embedding", model, device, batch_size, trust_remote_code, backend, str(cache_dir))
    return pool.get(key, lambda: load_or_explain("embed_model", model, load))
