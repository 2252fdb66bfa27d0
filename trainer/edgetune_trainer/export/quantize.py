"""int8 and fp16 versions of an exported fp32 ONNX graph, and accuracy-aware int8.

int8 paths (onnxruntime.quantization):
- dynamic (text / transformers): weights of MatMul (per output channel) and Gather (embeddings, per
  tensor: onnxruntime has no per-channel Gather) become int8 once; activation scales are computed per
  call at run time. Transformer activations (attention outputs, GELU outputs) change range from input to
  input, which fixed ranges from a calibration sample follow badly; dynamic quantization is onnxruntime's
  recommendation for transformers on CPU. Per channel, because real pretrained weights need it: on the
  fine-tuned all-MiniLM-L6-v2 (bench_export.py) per-tensor MatMul weights cost 1.67 pt of accuracy and
  per-channel ones 0.08 pt, at the same size (23.1 vs 23.2 MB) and speed (2.25 vs 2.30 ms, 1 thread).
- static (CNNs): weights int8 per output channel, activations uint8 with ranges calibrated (MinMax) on a
  sample of the eval split, QDQ format, after `quant_pre_process`. Static is needed for speed: dynamic
  quantization turns Conv into ConvInteger, which onnxruntime's CPU provider runs several times slower
  than fp32 (measured: resnet18 94 ms vs 16 ms fp32), while static QDQ fuses into QLinearConv (5 ms).
  The pre-processing pass is needed too: without it the same static model ran at 20 ms.
  Where static quantization fails (an operator its calibrator or quantizer does not support), the
  exporter falls back to dynamic and records why.

Accuracy-aware int8 (`accuracy_aware`): when the int8 model misses the accuracy budget, measure the
sensitivity of the weighted layers (logit error with only them quantized: per block first, then per layer
inside the blocks reached, see `SensitivitySearch`), then keep the most sensitive layers in fp32
(`nodes_to_exclude`), one at a time, until the budget is met or nothing is left to try.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgetune_trainer.export.inference import Feeds

log = logging.getLogger(__name__)

# Operators whose weights quantization shrinks: each is one torch layer (Linear, Conv, Embedding).
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather")
TWO_GB = 2**31  # protobuf's hard limit on one serialized message: larger models need external data


class QuantizationError(RuntimeError):
    """A quantized model could not be produced."""


@dataclass(frozen=True)
class Layer:
    """One weighted operator of the graph: its node name (what onnxruntime excludes) and torch module path."""

    node: str
    op_type: str
    module: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "opType": self.op_type, "module": self.module}


def module_path(node_name: str, wrapper: str = "model") -> str:
    """'/model/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1'; '/model/bert/encoder/layer.3/output/dense/MatMul'
    -> 'bert.encoder.layer.3.output.dense'. The TorchScript exporter names nodes by module scope, and a
    Sequential's children repeat their parent's name ('layer1' then 'layer1.0'), which this folds."""
    scopes = [part for part in node_name.split("/") if part][:-1]
    if scopes and scopes[0] == wrapper:
        scopes = scopes[1:]
    path: list[str] = []
    for scope in scopes:
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope
        else:
            path.append(scope)
    return ".".join(path) or node_name


def weighted_layers(model: onnx.ModelProto) -> list[Layer]:
    """The graph's weighted operators in graph order: a weight (initializer) is one of their inputs."""
    initializers = {init.name for init in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or not node.name:
            continue
        weight_slot = node.input[0] if node.op_type == "Gather" else (node.input[1] if len(node.input) > 1 else "")
        if weight_slot in initializers:
            layers.append(Layer(node.name, node.op_type, module_path(node.name)))
    return layers


def model_bytes(path: Path) -> int:
    """Size of a model: the .onnx file plus its external data files, if any."""
    total = path.stat().st_size
    for data in path.parent.glob(path.name + ".data*"):
        total += data.stat().st_size
    return total


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs 'consider pre-processing' on the root logger for every call; the text
    path skips pre-processing on purpose (symbolic shape inference fails on BERT's attention-mask
    arithmetic), so the advice is noise there."""

    class _DropAdvice(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


class _CalibrationFeeds:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._items = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._items, None)


@dataclass
class Int8Quantizer:
    """Quantizes one fp32 graph, repeatedly if need be (all layers, all but some, or only one)."""

    fp32: Path
    workdir: Path
    method: str  # "dynamic" | "static"
    calibration: Sequence[Feeds] = ()
    # Per output channel: standard for static QLinearConv, and for dynamic MatMul what keeps real
    # transformer weights accurate (see above); neither costs run time.
    per_channel: bool = True
    large: bool = field(default=False, init=False)  # >= 2 GiB: read and written with external data
    source: Path = field(init=False)
    _calibration_cache: Path = field(init=False)
    _count: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.source = self.fp32
        self._calibration_cache = self.workdir / "calibration.json"
        self.large = model_bytes(self.fp32) >= TWO_GB
        if self.method == "static":
            if not self.calibration:
                raise QuantizationError("static quantization needs calibration examples and none were given")
            from onnxruntime.quantization.shape_inference import quant_pre_process

            self.source = self.workdir / "preprocessed.onnx"
            quant_pre_process(str(self.fp32), str(self.source), save_as_external_data=self.large)

    def layers(self) -> list[Layer]:
        """The weighted layers this method quantizes (dynamic quantization leaves Gemm in fp32)."""
        layers = weighted_layers(onnx.load(str(self.source), load_external_data=False))
        if self.method == "dynamic":
            from onnxruntime.quantization.registry import IntegerOpsRegistry

            layers = [layer for layer in layers if layer.op_type in IntegerOpsRegistry]
        return layers

    def quantize(self, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Path:
        """A new int8 model (a fresh file each call); `only` quantizes just those nodes, `exclude` keeps
        those in fp32."""
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        self._count += 1
        out = self.workdir / f"int8-{self._count}.onnx"
        common: dict[str, Any] = {
            "per_channel": self.per_channel,
            "weight_type": QuantType.QInt8,
            "nodes_to_quantize": list(only) if only else None,
            "nodes_to_exclude": list(exclude) or None,
            "use_external_data_format": self.large,
        }
        with _quiet_quantizer():
            if self.method == "dynamic":
                quantize_dynamic(str(self.source), str(out), **common)
            else:
                # The calibration ranges are computed on the first call and cached: later calls (one per
                # sensitivity probe or fallback step) only re-quantize.
                reader = None if self._calibration_cache.is_file() else _CalibrationFeeds(self.calibration)
                quantize_static(
                    str(self.source),
                    str(out),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    calibration_cache_path=str(self._calibration_cache),
                    **common,
                )
        return out


def convert_fp16(fp32: Path, out: Path) -> Path:
    """Float16 weights and arithmetic; inputs and outputs stay int64/float32 (keep_io_types) so callers
    feed the same tensors as to the fp32 model."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32))
    converted = convert_float_to_float16(model, keep_io_types=True)
    large = model_bytes(fp32) >= 2 * TWO_GB  # still over 2 GiB at half the size
    onnx.save_model(converted, str(out), save_as_external_data=large, location=out.name + ".data")
    return out


# --- accuracy-aware int8 -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One int8 model tried: the layers it kept in fp32 and how it did."""

    kept: tuple[str, ...]  # module paths
    accuracy_drop: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"keptFp32": list(self.kept), "accuracyDrop": round(self.accuracy_drop, 4), "sizeBytes": self.size_bytes}


@dataclass
class FallbackResult:
    model: Path
    accuracy_drop: float
    kept: list[Layer]
    attempts: list[Attempt]
    sensitivity: list[Probe]  # every probe measured, in measurement order
    stopped: str  # why the search ended

    @property
    def met(self) -> bool:
        return self.stopped == "budget met"


@dataclass(frozen=True)
class Probe:
    """One sensitivity measurement: the logit error with only `layers` quantized."""

    scope: str  # a block (bert.encoder.layer.3, layer1.0) or one layer's module path
    layers: tuple[Layer, ...]
    error: float

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"scope": self.scope, "logitError": float(f"{self.error:.6g}")}
        if len(self.layers) == 1:
            entry.update(self.layers[0].to_dict())
        else:
            entry["layers"] = len(self.layers)
        return entry


def block_of(module: str) -> str:
    """The block a layer belongs to: its path up to the first numeric index ('bert.encoder.layer.3',
    'layer1.0'), or the layer itself outside indexed containers ('bert.embeddings.word_embeddings', 'fc')."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: index + 1])
    return module


class SensitivitySearch:
    """Layers most sensitive first, measured where it matters and no more.

    A probe quantizes only some layers and measures the logit error against fp32 on a few examples, which
    isolates their own error from the others' (the error of a whole int8 model mixes them). One probe
    costs one quantization (about 5 s for BERT-base), so layers are probed per block first (BERT-base: 15
    blocks, not 77 layers), and one by one only inside the blocks the fallback actually reaches; layers
    stay the unit kept in fp32, so each step grows the model as little as possible.
    """

    def __init__(self, quantizer: Int8Quantizer, error_of: Callable[[Path], float]) -> None:
        self.quantizer = quantizer
        self.error_of = error_of
        self.probes: list[Probe] = []

    def measure(self, scope: str, layers: Sequence[Layer]) -> Probe:
        model = self.quantizer.quantize(only=[layer.node for layer in layers])
        try:
            probe = Probe(scope, tuple(layers), self.error_of(model))
        finally:
            _remove_model(model)
        self.probes.append(probe)
        return probe

    def ranked(self, layers: Sequence[Layer]) -> Iterator[Layer]:
        """Layers with a measurable error, most sensitive block first, most sensitive layer first within."""
        blocks: dict[str, list[Layer]] = {}
        for layer in layers:
            blocks.setdefault(block_of(layer.module), []).append(layer)
        scored = sorted((self.measure(name, members) for name, members in blocks.items()), key=lambda p: -p.error)
        for block in scored:
            if block.error <= 0.0:
                break
            if len(block.layers) == 1:
                yield block.layers[0]
                continue
            inner = sorted((self.measure(layer.module, [layer]) for layer in block.layers), key=lambda p: -p.error)
            yield from (probe.layers[0] for probe in inner if probe.error > 0.0)


def accuracy_aware(
    quantizer: Int8Quantizer,
    first: Path,
    first_drop: float,
    *,
    max_drop: float,
    drop_of: Callable[[Path], float],
    error_of: Callable[[Path], float],
    max_size_bytes: int | None = None,
    max_layers: int | None = None,
) -> FallbackResult:
    """Keep the most sensitive layers in fp32, one more per step, until the accuracy drop is within
    `max_drop`. Stops early when the next model would break the size budget (it cannot pass then), after
    `max_layers` layers, or when no layer with a measurable sensitivity is left."""
    attempts = [Attempt((), first_drop, model_bytes(first))]
    if first_drop <= max_drop:
        return FallbackResult(first, first_drop, [], attempts, [], "budget met")
    search = SensitivitySearch(quantizer, error_of)
    kept: list[Layer] = []
    tried: list[tuple[Path, float, list[Layer]]] = [(first, first_drop, [])]
    stopped = "no layer with a measurable sensitivity left to keep in fp32"
    for layer in search.ranked(quantizer.layers()):
        if max_layers is not None and len(kept) >= max_layers:
            stopped = f"kept the limit of {max_layers} layer(s) in fp32"
            break
        trial = quantizer.quantize(exclude=[item.node for item in [*kept, layer]])
        size = model_bytes(trial)
        if max_size_bytes is not None and size > max_size_bytes:
            _remove_model(trial)
            stopped = f"keeping {layer.module} in fp32 too would exceed the size budget ({size / 1e6:.2f} MB)"
            break
        kept = [*kept, layer]
        drop = drop_of(trial)
        attempts.append(Attempt(tuple(item.module for item in kept), drop, size))
        tried.append((trial, drop, kept))
        log.info("int8 with %d layer(s) in fp32: accuracy drop %.2f pt", len(kept), drop)
        if drop <= max_drop:
            stopped = "budget met"
            break
    # The result is the attempt with the smallest drop (the last one when the budget was met); ties go
    # to fewer fp32 layers, i.e. the smaller model.
    model, drop, kept = min(tried, key=lambda item: (item[1], len(item[2])))
    for path, _, _ in tried:
        if path != model and path != first:
            _remove_model(path)
    return FallbackResult(model, drop, kept, attempts, search.probes, stopped)


def logit_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over samples of the largest absolute logit difference."""
    return float(np.abs(reference - candidate).max(axis=1).mean())


def _remove_model(path: Path) -> None:
    path.unlink(missing_ok=True)
    for data in path.parent.glob(path.name + ".data*"):
        data.unlink(missing_ok=True)
