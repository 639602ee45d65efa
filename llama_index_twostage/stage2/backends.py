"""Cross-encoder runtimes: torch at full or half precision, ONNX Runtime at fp32 or dynamic int8, and OpenVINO at
fp32, bf16 or static int8.

The ONNX path exports (and quantizes) the model once into ``model_cache_dir`` (model folders may be read-only, and
an export takes seconds) and reuses that file in every later process. It drives ONNX Runtime through ``torch.onnx`` and
``onnxruntime.quantization`` directly rather than through sentence-transformers' ``backend="onnx"``: that route
needs ``optimum-onnx``, which pins ``transformers<4.58`` and so cannot live beside the transformers 5 this package
runs on. The exported model replaces the torch module inside the ``CrossEncoder``, so tokenisation and the
activation stay exactly sentence-transformers' own.

The export uses eager attention, whose graph ONNX Runtime's transformer optimizer fuses into its own ``Attention``,
``SkipLayerNormalization`` and ``BiasGelu`` kernels: unfused, each layer's attention runs as a dozen small ops over
a padded score tensor, and ONNX Runtime fp32 was slower than torch (1.18x); fused and run pair by pair it is 0.63x
(README "Performance"). A fusion whose scores differ from the plain export's is dropped, so an architecture the
optimizer misreads costs speed, never scores.

OpenVINO compiles that same export for the CPU (it reads ONNX Runtime's fused ops), at fp32 or, on CPUs that compute
bf16 natively (AVX512-BF16, AMX), with bf16 arithmetic: its fused kernels cost less per batch than torch's eager
modules, so bf16 there ran at 0.35x stock against torch bf16's 0.49x, ranking kept (README "Performance").

OpenVINO's int8 is quantized by NNCF, OpenVINO's own post-training quantizer, from OpenVINO's conversion of the torch
model (NNCF cannot read ONNX Runtime's fused ops): the fastest backend measured (0.27-0.30x stock), batchable because
its activation scales are fixed by calibration, but it keeps a ranking only where the model's scores are separated
more than int8's error. This package's test reranker loses it, and ``auto``'s short calibration set cannot tell, so it
is an explicit choice only (:mod:`~llama_index_twostage.stage2.auto`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from filelock import FileLock

from llama_index_twostage.models import looks_like_local_path
from llama_index_twostage.stage2.calibration import Pairs, activation_calibration_set, calibration_set

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

RerankBackend = Literal[
    "torch",
    "torch-bf16",
    "torch-fp16",
    "onnx",
    "onnx-int8",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
]
BackendSetting = Literal["auto", RerankBackend, "http"]
"""What ``rerank_backend`` accepts: a backend, ``auto`` (see :mod:`~llama_index_twostage.stage2.auto`) or ``http``."""
logger = logging.getLogger(__name__)

ONNX_EXTRA = 'pip install "llama-index-twostage[onnx]"'
OPENVINO_EXTRA = 'pip install "llama-index-twostage[openvino]"'
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` per backend (a CPU without native bf16 computes ``bf16`` in fp32); for
``openvino-int8``, the precision of what its quantization left in float."""
OPENVINO_INT8_MODEL = "openvino_int8_r1/model.xml"
"""``openvino-int8``'s model in the export folder: an OpenVINO IR (this file and its weights), with its recipe's
revision in the folder's name."""
ONNX_OPSET = 17
_TORCH_DTYPES: dict[str, torch.dtype] = {"torch-bf16": torch.bfloat16, "torch-fp16": torch.float16}
# An int8 file name carries its recipe's revision, so a changed recipe never reuses an older cached export.
_ONNX_FILES = {
    "onnx": "model_fused_r1.onnx",
    "onnx-int8": "model_int8_r3.onnx",
}
FUSION_TOLERANCE = 1e-3
"""Largest difference of an output (logits, token embeddings) between the fused and the plain export for the fusion
to be kept."""


def is_onnx(backend: str) -> bool:
    """Whether ``backend`` runs on ONNX Runtime."""
    return backend in _ONNX_FILES


def is_openvino(backend: str) -> bool:
    """Whether ``backend`` runs on OpenVINO."""
    return backend in OPENVINO_PRECISIONS


def runs_an_export(backend: str) -> bool:
    """Whether ``backend`` runs the model's ONNX export (ONNX Runtime or OpenVINO) instead of torch, on the CPU."""
    return is_onnx(backend) or is_openvino(backend)


def torch_model_kwargs(backend: RerankBackend) -> dict[str, Any]:
    """``model_kwargs`` for ``CrossEncoder``: the half-precision dtype of the backend, none for fp32 and ONNX."""
    dtype = _TORCH_DTYPES.get(backend)
    return {"dtype": dtype} if dtype is not None else {}


def installed(backend: str) -> bool:
    """Whether the optional packages ``backend`` needs (the ``onnx`` or ``openvino`` extra) can be imported."""
    try:
        require_runtime(backend)
    except ImportError:
        return False
    return True


def runtime_packages(backend: str) -> list[str]:
    """The optional packages ``backend`` imports: ONNX Runtime and onnx export and fuse the graph that ONNX Runtime
    runs and OpenVINO compiles; OpenVINO's int8 is NNCF's quantization of OpenVINO's own conversion instead."""
    if backend == "openvino-int8":
        return ["openvino", "nncf"]
    return [*(["openvino"] if is_openvino(backend) else []), "onnxruntime", "onnx"]


def require_runtime(backend: str, setting: str = "rerank_backend") -> None:
    """Fail before any loading when the optional packages of ``backend`` are missing, naming the extra that
    installs them."""
    packages = runtime_packages(backend)
    try:
        for package in packages:
            importlib.import_module(package)
    except ImportError as error:
        extra = OPENVINO_EXTRA if is_openvino(backend) else ONNX_EXTRA
        listed = f"{', '.join(packages[:-1])} and {packages[-1]}"
        raise ImportError(
            f"{setting} {backend!r} needs the optional packages {listed} ({error}); install them with: {extra}"
        ) from error


def weights_fingerprint(model: str) -> str:
    """Identity of the weights: a local folder's file names, sizes and mtimes (a retrained model re-exports);
    a hub id by name (pin a revision by downloading it to a folder)."""
    parts = [model, torch.__version__, str(ONNX_OPSET)]
    folder = Path(model).expanduser()
    if looks_like_local_path(model) or folder.is_dir():
        parts = [str(folder.resolve()), *parts[1:]]
        for file in sorted(path for path in folder.rglob("*") if path.is_file()):
            stat = file.stat()
            parts.append(f"{file.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def export_dir(cache_dir: Path, model: str) -> Path:
    """The cache folder of one model's exports: a readable name plus the fingerprint of its weights."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/\\")).name) or "model"
    return Path(cache_dir).expanduser() / f"{slug}-{weights_fingerprint(model)}"


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename, so a concurrent process never reads half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=f".partial{target.suffix}")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is meant to be shared
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write a folder of files through a temporary folder renamed into place, so a concurrent process sees all of it
    or none; where another process renamed its own first, that one stays."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, suffix=".partial"))
    try:
        write(temporary)
        temporary.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        for file in temporary.iterdir():
            file.chmod(0o644)
        try:
            temporary.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # only what this call created


_TRACING_MODULES = r"(torch|transformers|onnx|onnxscript|openvino|llama_index_twostage)(\.|$)"


@contextlib.contextmanager
def tracing_warnings_hidden() -> Iterator[None]:
    """Hide the warnings that tracing a model for export raises (python control flow, the exporters' deprecations).
    Warning filters are process-wide: only warnings raised from these libraries' modules are hidden, not what other
    threads of the application warn about meanwhile."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=_TRACING_MODULES)
        yield


_DECISION_LOCK_TIMEOUT_S = 30.0
"""A decision file is held for one small write; a lock held longer belongs to a stuck process."""


class DecisionFile:
    """A JSON file of measurements and decisions by key, shared by processes: each write is atomic, and a file
    that is missing or unreadable reads as empty (what it held is measured again)."""

    def __init__(self, path: Path, holds: str) -> None:
        self.path = path
        self.holds = holds  # what it holds, in words, for the warning when it cannot be written

    def _read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self._read().get(key)

    def put(self, entries: dict[str, dict[str, Any]]) -> None:
        """Add entries under a lock file beside it (processes adding at once keep each other's entries); a read-only
        or busy cache only costs a measurement in the next process."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(self.path.with_name(f"{self.path.name}.lock"), timeout=_DECISION_LOCK_TIMEOUT_S):
                merged = {**self._read(), **entries}
                write_atomically(self.path, lambda file: file.write_text(json.dumps(merged, indent=1), "utf-8"))
        except OSError as error:  # filelock's Timeout is one
            logger.warning("could not store %s in %s (%s)", self.holds, self.path, error)


class _PositionalInputs(torch.nn.Module):
    """A transformers model as a function of positional tensors (the form ``torch.onnx.export`` traces), returning
    its ``output``."""

    def __init__(self, model: torch.nn.Module, names: list[str], output: str) -> None:
        super().__init__()
        self.model, self.names, self.output = model, names, output

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors)))[self.output]


def export_fused(
    model: torch.nn.Module,
    sample: Mapping[str, torch.Tensor],
    output: tuple[str, dict[int, str]],
    check: list[dict[str, np.ndarray]],
    target: Path,
) -> None:
    """Export a transformers encoder to ``target`` with eager attention, fused by ONNX Runtime where the fusion
    keeps the named ``output`` (name, dynamic axes) on the ``check`` inputs; written atomically.

    ``sample`` is a tokenizer's output, whose keys become the graph's inputs, with dynamic batch and token axes.
    """
    model = model.float().cpu().eval()
    model.set_attn_implementation("eager")  # sdpa exports behind a NaN guard the optimizer does not recognise
    names, (output_name, output_axes) = list(sample.keys()), output
    dynamic = {name: {0: "batch", 1: "tokens"} for name in names} | {output_name: output_axes}

    def write(path: Path) -> None:
        with tracing_warnings_hidden(), torch.no_grad():
            torch.onnx.export(
                _PositionalInputs(model, names, output_name),
                tuple(sample[name] for name in names),
                str(path),
                input_names=names,
                output_names=[output_name],
                dynamic_axes=dynamic,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        _fuse_in_place(path, model.config, output_name, check)

    write_atomically(target, write)


def _sample_pair(cross_encoder: CrossEncoder) -> dict[str, torch.Tensor]:
    """One tokenized (query, passage) pair: what an export or conversion traces the classifier with."""
    return dict(cross_encoder.tokenizer(["query"], ["a candidate passage"], return_tensors="pt"))


def _export_fp32(cross_encoder: CrossEncoder, target: Path) -> None:
    """The classifier in ONNX, fused where the fusion keeps its scores (:func:`export_fused`)."""
    sample = _sample_pair(cross_encoder)
    check = calibration_feeds(cross_encoder.tokenizer, list(sample.keys()), calibration_set()[:1])
    export_fused(cross_encoder[0].model, sample, ("logits", {0: "batch"}), check, target)


def cpu_session(model: Path | bytes) -> Any:
    """An ONNX Runtime session on the CPU of the model at a path, or of its bytes."""
    import onnxruntime

    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])


def _fuse_in_place(path: Path, config: Any, output: str, check: list[dict[str, np.ndarray]]) -> None:
    """Replace the export at ``path`` by ONNX Runtime's fused BERT graph when its ``output`` on ``check`` stays
    within :data:`FUSION_TOLERANCE` of the plain export's; otherwise keep it as it is (and say so)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers import optimizer

    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    if not heads or not hidden:
        logger.info("no attention heads or hidden size in the model config: the ONNX export stays unfused")
        return
    fused = optimizer.optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    plain, candidate = cpu_session(path), cpu_session(fused.model.SerializeToString())
    difference = max(
        float(np.abs(plain.run([output], feed)[0] - candidate.run([output], feed)[0]).max()) for feed in check
    )
    if difference > FUSION_TOLERANCE:
        logger.warning(
            "ONNX Runtime's fused graph changes the %s by %.2g: the export stays unfused", output, difference
        )
        return
    fused.save_model_to_file(str(path))  # which also declares the com.microsoft domain of the fused ops
    # Typed for the quantizers: ONNX's own shape inference stops at the fused ops, and a quantizer silently leaves an
    # untyped activation in float.
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=True), str(path))


def narrowing_matmuls(model_path: Path) -> list[str]:
    """MatMul nodes whose constant weight has more rows than columns: each layer's FFN down-projection.

    The down-projection reads the GELU output, whose few large outliers set the int8 scale of a whole row and
    flatten everything else to a handful of levels; of all the encoder's MatMuls, int8 there costs most of the
    agreement with fp32 (README "Performance"). Detected by shape, so it holds for any BERT-like encoder.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    shapes = {weight.name: tuple(weight.dims) for weight in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and len(shape := shapes.get(node.input[1], ())) == 2 and shape[0] > shape[1]
    ]


_FUSED_OPS_ARE_FLOAT = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT: shape inference cannot type fused ops


class _StandInRootHandler(logging.Handler):
    """Stands in for the application's missing root handler: ONNX Runtime's records go to this module's logger at
    debug level, every other record where it would have gone without any handler (``logging.lastResort``)."""

    def __init__(self, onnxruntime_dir: str) -> None:
        super().__init__()
        self.onnxruntime_dir = onnxruntime_dir

    def emit(self, record: logging.LogRecord) -> None:
        if record.pathname.startswith(self.onnxruntime_dir):
            logger.debug("onnxruntime: %s", record.getMessage().strip())
        elif logging.lastResort is not None and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)


@contextlib.contextmanager
def application_logging_untouched() -> Iterator[None]:
    """ONNX Runtime's quantizers log through ``logging.warning``, which configures the root logger (a stderr handler)
    when the application has not yet: its own ``logging.basicConfig`` would then do nothing. Where the root logger
    has no handler, one stands in for the call (:class:`_StandInRootHandler`) and is taken back."""
    import onnxruntime

    root = logging.getLogger()
    if root.handlers:
        yield
        return
    stand_in = _StandInRootHandler(str(Path(onnxruntime.__file__).parent))
    root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeHandler(stand_in)


def quantize_int8(source: Path, target: Path, keep_float: Sequence[str] = ()) -> None:
    """Dynamic int8 (weights per channel, activations at run time) of the MatMuls and the fused attention's
    projections, but the nodes named in ``keep_float``: no calibration data needed, VNNI where the CPU has it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with application_logging_untouched():
        write_atomically(
            target,
            lambda path: quantize_dynamic(
                quantizer_input(source),
                path,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"],  # a fused Attention becomes QAttention
                nodes_to_exclude=list(keep_float),
                extra_options=_FUSED_OPS_ARE_FLOAT,
            ),
        )


def _quantize_int8(source: Path, target: Path) -> None:
    """The cross-encoder's dynamic int8 (:func:`quantize_int8`): its width-reducing MatMuls
    (:func:`narrowing_matmuls`) stay fp32."""
    quantize_int8(source, target, keep_float=narrowing_matmuls(source))


def quantizer_input(source: Path) -> Any:
    """The ONNX model at ``source``, loaded, for ONNX Runtime's quantizers. Given a path, they write
    ``<name>-inferred.onnx`` beside the model and delete it after, so two processes quantizing one shared export
    collide (a FileNotFoundError, seen in the two-process test); given the model, each works in a temporary folder
    of its own."""
    import onnx

    return onnx.load(str(source))


def calibration_feeds(tokenizer: Any, input_names: list[str], pairs: Pairs) -> list[dict[str, np.ndarray]]:
    """One model input per (query, passage) of ``pairs``, each alone at its own length (padding would widen the
    ranges with values no real token produces), cut to the tokenizer's window of at most 512 tokens."""
    window = min(int(tokenizer.model_max_length), 512)
    feeds = []
    for query, passages in pairs:
        for passage in passages:
            encoded = tokenizer(query, passage, truncation=True, max_length=window, return_tensors="np")
            feeds.append({name: encoded[name].astype(np.int64) for name in input_names})
    return feeds


def built_once(target: Path, build: Callable[[Path], None], message: str, *args: object) -> Path:
    """``target``, built by ``build`` (and ``message`` logged) when it is not there yet."""
    if not target.is_file():
        logger.info(message, *args)
        build(target)
    return target


def cached_export(
    folder: Path,
    files: Mapping[str, str],
    backend: str,
    export: Callable[[Path], None],
    quantizers: Mapping[str, Callable[[Path, Path], None]],
    label: str,
) -> Path:
    """The ONNX file of ``backend`` in ``folder`` (named by ``files``): the fp32 graph written by ``export`` (what
    ``onnx`` and the OpenVINO backends run), or ``quantizers[backend](fp32, target)`` of it; each built (and logged)
    the first time, reused afterwards."""
    fp32 = built_once(
        folder / files["onnx"], export, "exporting %s to ONNX in %s (once; later loads reuse it)", label, folder
    )
    if backend == "onnx" or is_openvino(backend):
        return fp32
    quantize = quantizers[backend]
    return built_once(
        folder / files[backend], lambda path: quantize(fp32, path), "quantizing %s to %s (once)", label, backend
    )


def quantize_openvino_int8(cross_encoder: CrossEncoder, target: Path) -> None:
    """Static int8 of the classifier by NNCF in its transformer mode (per-channel int8 weights; int8 activations
    whose ranges come from the short and lengthened calibration passages, smoothed first; softmax, norms and GELU
    left at fp32), written as an OpenVINO IR at ``target``, atomically (an IR is two files: the folder is renamed
    into place)."""
    import nncf
    import openvino

    model = cross_encoder[0].model.float().cpu().eval()
    sample = _sample_pair(cross_encoder)
    with torch.no_grad(), tracing_warnings_hidden():
        converted = openvino.convert_model(model, example_input=sample)
    feeds = calibration_feeds(cross_encoder.tokenizer, list(sample), activation_calibration_set())
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars print to stdout, which may carry JSON
        quantized = nncf.quantize(
            converted, nncf.Dataset(feeds), subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER
        )
    write_folder_atomically(
        target.parent,
        lambda folder: openvino.save_model(quantized, str(folder / target.name), compress_to_fp16=False),
    )


def exported_model(cross_encoder: CrossEncoder, model: str, backend: RerankBackend, cache_dir: Path) -> Path:
    """The model file for ``backend`` (ONNX, or OpenVINO's IR for ``openvino-int8``), exported (and quantized) on
    first use, reused from the cache afterwards."""
    folder = export_dir(cache_dir, model)
    if backend == "openvino-int8":
        return built_once(
            folder / OPENVINO_INT8_MODEL,
            lambda target: quantize_openvino_int8(cross_encoder, target),
            "quantizing %s to openvino-int8 with NNCF in %s (once; later loads reuse it)",
            model,
            folder,
        )
    return cached_export(
        folder,
        _ONNX_FILES,
        backend,
        lambda path: _export_fp32(cross_encoder, path),
        {"onnx-int8": _quantize_int8},
        model,
    )


class OnnxSequenceClassifier(torch.nn.Module):
    """Stands in for the transformers classifier inside a ``CrossEncoder``: same inputs, ``logits`` out.

    With ``per_pair`` each pair runs alone, cut to its own length, with no padding. On a CPU that is the fastest way
    to run the fused graph (its padded batches were 0.91x stock, pair by pair 0.63x; README "Performance"), and it
    bounds memory, since ONNX Runtime's peak follows the padded batch. Dynamic int8 needs it on any device: it
    quantizes activations with one scale per tensor, computed at run time, so in a batch the largest activation of
    any pair (padding included) would set the scale of all, and a pair's score would move with its neighbours.
    """

    def __init__(self, path: Path, config: Any, device: str | None, *, per_pair: bool = False) -> None:
        super().__init__()
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if device and device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.config = config
        self.path = path
        self.per_pair = per_pair

    def _logits(self, features: dict[str, np.ndarray]) -> np.ndarray:
        (logits,) = self.session.run(["logits"], features)
        return logits

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        feed = {name: features[name].cpu().numpy() for name in self.input_names}
        if not self.per_pair:
            return {"logits": torch.from_numpy(self._logits(feed))}
        lengths = features["attention_mask"].sum(dim=1).tolist()
        rows = [
            self._logits({name: values[row : row + 1, :length] for name, values in feed.items()})
            for row, length in enumerate(lengths)
        ]
        return {"logits": torch.from_numpy(np.concatenate(rows))}


class OpenVinoGraph(torch.nn.Module):
    """Stands in for a transformers module (a ``CrossEncoder``'s classifier, a ``SentenceTransformer``'s encoder):
    the same inputs, its ``output`` out, computed from the model at ``path`` (the ONNX export, or ``openvino-int8``'s
    IR) by OpenVINO on the CPU at the precision of ``backend`` (:data:`OPENVINO_PRECISIONS`).

    Batches stay the token-bounded ones of the CPU (padding costs in full here too). OpenVINO's bf16 rounds
    differently per batch shape, like torch's, so its scores are batch-independent to the same 2e-2, not exactly.
    """

    def __init__(self, path: Path, config: Any, output: str, backend: str) -> None:
        super().__init__()
        import openvino

        core = openvino.Core()
        options = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[backend], "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", options)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output = output
        self.config = config
        self.path = path

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        request = self.compiled.create_infer_request()  # one per call: a request is not safe across threads
        result = request.infer({name: features[name].cpu().numpy() for name in self.input_names})
        return {self.output: torch.from_numpy(np.array(result[self.output]))}  # a copy: the request owns its memory


def require_cpu(backend: str, device: str | None, setting: str = "rerank_backend") -> None:
    """OpenVINO runs here on the CPU only: a GPU device set beside it is a contradiction, not a silent fallback."""
    if is_openvino(backend) and device not in (None, "cpu"):
        raise ValueError(
            f"{setting} {backend!r} runs on the CPU, but device is {device!r}: unset device (or set 'cpu'), or "
            "choose a backend for that device (auto picks one)"
        )


def use_export(
    cross_encoder: CrossEncoder, model: str, backend: RerankBackend, cache_dir: Path, device: str | None
) -> None:
    """Swap the torch classifier inside ``cross_encoder`` for the export of ``backend`` on its runtime (ONNX Runtime
    or OpenVINO; torch weights freed)."""
    transformer = cross_encoder[0]
    path = exported_model(cross_encoder, model, backend, cache_dir)
    if is_openvino(backend):
        transformer.model = OpenVinoGraph(path, transformer.model.config, "logits", backend)
        return
    on_gpu = bool(device and device.startswith("cuda"))
    per_pair = backend == "onnx-int8" or not on_gpu  # see OnnxSequenceClassifier
    transformer.model = OnnxSequenceClassifier(path, transformer.model.config, device, per_pair=per_pair)


def runs_on_cpu(cross_encoder: CrossEncoder) -> bool:
    """Whether ``cross_encoder``'s forward passes run on a CPU. An ONNX backend's ``CrossEncoder`` stays on the CPU
    (it only tokenizes there) while its session may run on CUDA, so the session's first provider says."""
    classifier = cross_encoder.model
    if isinstance(classifier, OnnxSequenceClassifier):
        return classifier.session.get_providers()[0] == "CPUExecutionProvider"
    return str(cross_encoder.device).startswith("cpu")
