"""Edge export: the trained model artifact -> ONNX (or TorchScript) -> int8 / fp16 -> checks -> storage.

    export_model(artifact_dir, target, examples, out_dir)   local: build, check, write model + manifest.json
    publish(out_dir, storage, key, report)                  upload to exports/<target>/, manifest last
    run_target(config, target, examples, workdir)           both, for one target of a job (edgetune-export)

Every check is recorded in the report and the manifest, whatever its outcome:
- graph parity: the fp32 ONNX graph against the torch model on N eval samples; a graph that does not
  reproduce torch (beyond float reordering) is an export bug and fails the export;
- parity of the published artifact against torch (max abs logit diff, label agreement);
- accuracy of the torch model and of the artifact on the eval examples, and the drop in points;
- size of the model file(s); p50/p95 latency at batch 1 on onnxruntime CPU with pinned threads;
- budgets (maxSizeMB, maxLatencyMs on p95, maxAccuracyDrop): a miss fails the export and the message
  says which budget, by how much and what to try.

Why the TorchScript-based `torch.onnx.export(dynamo=False)` and not the dynamo exporter (torch 2.14's
default): measured here on BERT and ResNet, (1) the dynamo exporter implements opset 18 and up only; for
ResNet its down-conversion to the default opset 17 failed (onnx version converter: "axes_input_to_attribute
... No initializer or constant input") and it silently kept opset 18, so the `opset` field would not be
honoured; (2) it took ~3 s per tiny model against ~0.2 s; (3) its node names (node_MatMul_91) lose the
module scope the TorchScript exporter keeps (/model/bert/encoder/layer.3/output/dense/MatMul), which the
accuracy-aware int8 search reports as the layers kept in fp32. Both handle the dynamic batch and sequence
axes of BERT and the batch axis of ResNet with exact parity. `ExportOptions(exporter="dynamo")` remains
available for opset >= 18.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from edgetune_trainer.artifact import ArtifactError, Preprocessing, load_artifact, sha256_file
from edgetune_trainer.config import ExportBudgets, ExportTarget, TrainJobConfig
from edgetune_trainer.inference import (
    OUTPUT,
    Feeds,
    LatencyStats,
    ModelInputs,
    OrtRunner,
    ParityStats,
    TorchRunner,
    accuracy,
    batched_logits,
    load_torchscript,
    logits_module,
    measure_latency,
    parity,
    slice_feeds,
)
from edgetune_trainer.models import ARTIFACT_FILE
from edgetune_trainer.quantize import (
    TWO_GB,
    FallbackResult,
    Int8Quantizer,
    QuantizationError,
    accuracy_aware,
    convert_fp16,
    logit_error,
    model_bytes,
)
from edgetune_trainer.storage import JobStorage, StorageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
MANIFEST_VERSION = 1
Phase = Literal["Succeeded", "Failed"]


class ExportError(RuntimeError):
    """The export cannot be built; the message says why and what to change."""


@dataclass(frozen=True)
class ExportOptions:
    """How the exporter measures; the defaults are what `edgetune-export` uses."""

    parity_samples: int = 64
    latency_runs: int = 50
    warmup_runs: int = 5
    threads: int = 1  # intra-op threads for the latency measurement (recorded in the manifest)
    eval_batch_size: int = 32
    calibration_samples: int = 64  # static int8: first N eval examples
    sensitivity_samples: int = 32  # accuracy-aware int8: per-layer logit error on the first N examples
    accuracy_aware: bool = True
    max_fallback_layers: int | None = None  # cap on layers kept in fp32 (None: as many as it takes)
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    external_data_threshold: int = TWO_GB  # models this big are written as model.onnx + model.onnx.data
    parity_tolerance: float = 1e-3  # fp32 graph vs torch, relative to the largest |logit|, at least 1


# --- the report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetCheck:
    """One budget of the spec against its measurement."""

    budget: str  # maxSizeMB | maxLatencyMs | maxAccuracyDrop
    limit: float
    measured: float
    unit: str
    hint: str

    @property
    def passed(self) -> bool:
        return self.measured <= self.limit

    def message(self) -> str:
        if self.passed:
            return f"{self.budget} met: {self.measured:.4g} {self.unit} <= {self.limit:g} {self.unit}"
        over = self.measured - self.limit
        share = f", {over / self.limit * 100:.0f} % over" if self.limit > 0 else ""
        return (
            f"{self.budget} missed: {self.measured:.4g} {self.unit} > {self.limit:g} {self.unit} "
            f"(by {over:.4g} {self.unit}{share}); {self.hint}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "limit": self.limit,
            "measured": round(self.measured, 6),
            "unit": self.unit,
            "passed": self.passed,
            "message": self.message(),
        }


@dataclass
class ExportReport:
    """The outcome of one export target: copied by the operator into status.exports[]; manifest.json
    holds all of it."""

    name: str
    phase: Phase
    message: str
    uri: str | None = None
    format: str = "onnx"
    quantize: str = "none"
    method: str | None = None  # int8: dynamic | static
    size_bytes: int | None = None
    fp32_size_bytes: int | None = None  # the fp32 graph before quantization, for the size ratio
    latency_ms: LatencyStats | None = None
    accuracy_drop: float | None = None  # percentage points, torch minus exported
    torch_accuracy: float | None = None
    exported_accuracy: float | None = None
    eval_samples: int = 0
    parity: ParityStats | None = None  # the published artifact vs torch
    graph_parity: ParityStats | None = None  # the fp32 graph vs torch, before quantization
    kept_fp32_layers: list[str] = field(default_factory=list)
    budgets: list[BudgetCheck] = field(default_factory=list)

    @property
    def size_ratio(self) -> float | None:
        if self.size_bytes is None or not self.fp32_size_bytes:
            return None
        return round(self.size_bytes / self.fp32_size_bytes, 4)

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"

    def to_status(self) -> dict[str, Any]:
        """The status.exports[] entry (the operator's ExportStatus): latencyMs is the p95."""
        status: dict[str, Any] = {"name": self.name, "phase": self.phase, "message": self.message}
        if self.uri:
            status["uri"] = self.uri
        if self.size_bytes is not None:
            status["sizeBytes"] = self.size_bytes
        if self.latency_ms is not None:
            status["latencyMs"] = round(self.latency_ms.p95_ms, 4)
        if self.accuracy_drop is not None:
            status["accuracyDrop"] = round(self.accuracy_drop, 4)
        return status

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "message": self.message,
            "uri": self.uri,
            "format": self.format,
            "quantize": self.quantize,
            "method": self.method,
            "sizeBytes": self.size_bytes,
            "fp32SizeBytes": self.fp32_size_bytes,
            "sizeRatio": self.size_ratio,
            "latencyMs": self.latency_ms.to_dict() if self.latency_ms else None,
            "accuracyDrop": None if self.accuracy_drop is None else round(self.accuracy_drop, 4),
            "accuracy": {
                "torch": self.torch_accuracy,
                "exported": self.exported_accuracy,
                "samples": self.eval_samples,
            },
            "parity": self.parity.to_dict() if self.parity else None,
            "graphParity": self.graph_parity.to_dict() if self.graph_parity else None,
            "keptFp32Layers": list(self.kept_fp32_layers),
            "budgets": [check.to_dict() for check in self.budgets],
        }


# --- building the graph --------------------------------------------------------------------------


def export_onnx(
    module: nn.Module, inputs: ModelInputs, sample: Feeds, path: Path, *, opset: int, exporter: str
) -> Path:
    """Write `module` as ONNX with a dynamic batch axis (and sequence axis for text) to `path`."""
    names = list(inputs.names)
    args = tuple(torch.from_numpy(sample[name]) for name in names)
    axes = {0: "batch", 1: "sequence"} if inputs.kind == "text" else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # Known and harmless here: the TorchScript exporter's deprecation notice, and tracer warnings on
        # transformers' mask helpers, whose traced branches do not depend on batch or sequence length
        # (parity at other shapes is tested).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        if exporter == "torchscript":
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=[OUTPUT],
                dynamic_axes={**{name: axes for name in names}, OUTPUT: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        else:
            dims = {index: torch.export.Dim(label, min=1) for index, label in axes.items()}
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=[OUTPUT],
                dynamic_shapes={name: dims for name in names},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    return path


def export_torchscript(module: nn.Module, inputs: ModelInputs, sample: Feeds, path: Path) -> Path:
    args = tuple(torch.from_numpy(sample[name]) for name in inputs.names)
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.14 marks TorchScript deprecated (FutureWarning) but it is the format the spec asks for
        # and it still traces and runs these models exactly (parity is checked after).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, args, check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def consolidate_external_data(path: Path) -> Path:
    """Put a model's external tensors into one `<name>.data` file next to it.

    The TorchScript exporter writes a model over 2 GiB as the graph plus one file per tensor; every later
    step (quantization, size accounting, publishing) expects the single-file `model.onnx.data` layout."""
    import onnx

    strays = [item for item in path.parent.iterdir() if item != path and item.name != path.name + ".data"]
    if not strays:
        return path
    model = onnx.load(str(path))  # reads the external tensors into memory
    for item in strays:
        if item.is_file():
            item.unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
    )
    return path


def save_onnx(source: Path, target: Path, threshold: int) -> list[Path]:
    """Copy a model to `target`, as one file, or with its weights in `<target>.data` when it is at least
    `threshold` bytes (protobuf cannot serialize one message over 2 GiB). Returns the files written."""
    import onnx

    external = model_bytes(source) >= threshold
    data_name = target.name + ".data"
    if not external and source.stat().st_size == model_bytes(source):
        # One self-contained file: a byte copy, so the published file is the very file that was evaluated.
        shutil.copyfile(source, target)
        return [target]
    model = onnx.load(str(source))  # also loads external data, whatever the file layout it came in
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=0,
    )
    return [target, target.parent / data_name] if external else [target]


# --- the export ------------------------------------------------------------------------------


@dataclass
class _Run:
    """What every stage of one export needs."""

    target: ExportTarget
    options: ExportOptions
    inputs: ModelInputs
    feeds: Feeds
    labels: list[int]
    module: nn.Module
    torch_logits: np.ndarray
    torch_accuracy: float
    work: Path
    _logits: dict[str, np.ndarray] = field(default_factory=dict)

    def evaluate(self, runner: Any) -> np.ndarray:
        return batched_logits(runner, self.feeds, self.options.eval_batch_size)

    def evaluate_onnx(self, path: Path) -> np.ndarray:
        """Logits of the ONNX model at `path` on every eval example, once per distinct file content (the
        int8 model chosen is evaluated before publication and again, as published, by the checks)."""
        key = sha256_file(path) if model_bytes(path) == path.stat().st_size else str(path.resolve())
        if key not in self._logits:
            self._logits[key] = self.evaluate(OrtRunner(path))
        return self._logits[key]

    def drop(self, logits: np.ndarray) -> float:
        return (self.torch_accuracy - accuracy(logits, self.labels)) * 100.0

    @property
    def parity_count(self) -> int:
        return min(self.options.parity_samples, len(self.labels))


@dataclass
class _Built:
    """The model chosen for publication (in the work folder) and how it was made."""

    path: Path
    method: str | None = None
    method_reason: str | None = None
    per_channel: bool | None = None
    calibration_samples: int = 0
    fallback: FallbackResult | None = None
    opset: int | None = None
    exporter: str | None = None


def export_model(
    artifact_dir: Path,
    target: ExportTarget,
    examples: Sequence[tuple[Any, int]],
    out_dir: Path,
    *,
    options: ExportOptions | None = None,
    source_uri: str | None = None,
    uri: str | None = None,
) -> ExportReport:
    """Build the export of `target` from the artifact at `artifact_dir` into `out_dir` (model files,
    tokenizer for text models, manifest.json) and return the report. Budget misses and unfaithful graphs
    give a Failed report; a corrupt artifact raises ArtifactError, unusable input ExportError."""
    options = options or ExportOptions()
    if not examples:
        raise ExportError("no eval examples: the exporter needs some to check parity, accuracy and latency")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    loaded, header = load_artifact(artifact_dir)
    with tempfile.TemporaryDirectory(prefix="edgetune-export-") as scratch:
        run = _prepare(loaded, header, target, examples, options, Path(scratch))
        report = ExportReport(
            name=target.name,
            phase="Succeeded",
            message="",
            uri=uri,
            format=target.format,
            quantize=target.quantize,
            torch_accuracy=run.torch_accuracy,
            eval_samples=len(run.labels),
        )
        built, model_files = _build(run, report, out_dir)
        if built is not None:
            _measure(run, report, built, model_files)
        if loaded.tokenizer is not None and built is not None:
            loaded.tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)
        _conclude(report, target.budgets, built)
        manifest = build_manifest(report, built, run, header, artifact_dir, out_dir, source_uri)
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return report


def _prepare(
    loaded: Any,
    header: dict[str, Any],
    target: ExportTarget,
    examples: Sequence[tuple[Any, int]],
    options: ExportOptions,
    work: Path,
) -> _Run:
    """Encode the eval examples once, exactly as training did, and get the torch model's logits."""
    prep = Preprocessing.from_dict(header["preprocessing"])
    inputs = ModelInputs(prep, loaded.tokenizer)
    raws = [raw for raw, _ in examples]
    labels = [int(label) for _, label in examples]
    if inputs.kind == "text" and loaded.tokenizer is None:
        raise ExportError("the artifact is a text model without tokenizer files")
    feeds = inputs.encode(raws)
    module = logits_module(loaded.model, inputs.kind)
    torch_logits = batched_logits(TorchRunner(module), feeds, options.eval_batch_size)
    return _Run(target, options, inputs, feeds, labels, module, torch_logits, accuracy(torch_logits, labels), work)


def _build(run: _Run, report: ExportReport, out_dir: Path) -> tuple[_Built | None, list[Path]]:
    """Export, check the fp32 graph, quantize; copy the chosen model into `out_dir`."""
    target, options = run.target, run.options
    # Two examples, not one: a batch of 1 lets the tracer treat the batch dimension as a broadcastable 1.
    sample = slice_feeds(run.feeds, 0, min(2, len(run.labels)))
    if target.format == "torchscript":
        path = export_torchscript(run.module, run.inputs, sample, out_dir / "model.pt")
        logits = run.evaluate(TorchRunner(load_torchscript(path)))
        report.graph_parity = parity(run.torch_logits[: run.parity_count], logits[: run.parity_count])
        if not _faithful(run, report):
            return None, []
        return _Built(path), [path]
    fp32 = export_onnx(
        run.module, run.inputs, sample, run.work / "fp32" / "model.onnx", opset=target.opset, exporter=options.exporter
    )
    consolidate_external_data(fp32)
    # The fp32 graph is run only on the samples the parity check and the int8 sensitivity probe use.
    probe = max(run.parity_count, min(options.sensitivity_samples, len(run.labels)))
    fp32_logits = batched_logits(OrtRunner(fp32), slice_feeds(run.feeds, 0, probe), options.eval_batch_size)
    report.fp32_size_bytes = model_bytes(fp32)
    report.graph_parity = parity(run.torch_logits[: run.parity_count], fp32_logits[: run.parity_count])
    if not _faithful(run, report):
        return None, []
    built = _quantized(run, report, fp32, fp32_logits)
    built.opset, built.exporter = _opset_of(built.path), options.exporter
    files = save_onnx(built.path, out_dir / "model.onnx", options.external_data_threshold)
    return built, files


def _faithful(run: _Run, report: ExportReport) -> bool:
    stats = report.graph_parity
    assert stats is not None
    scale = max(1.0, float(np.abs(run.torch_logits[: run.parity_count]).max()))
    tolerance = run.options.parity_tolerance * scale
    if stats.max_abs_logit_diff <= tolerance:
        return True
    report.phase = "Failed"
    report.message = (
        f"the exported fp32 graph does not reproduce the torch model: max abs logit difference "
        f"{stats.max_abs_logit_diff:.3g} over {stats.samples} eval samples (tolerance {tolerance:.3g}), label "
        f"agreement {stats.label_agreement:.1%}; an operator was exported wrongly: try another opset or "
        "format: torchscript, and report it"
    )
    return False


def _quantized(run: _Run, report: ExportReport, fp32: Path, fp32_logits: np.ndarray) -> _Built:
    target = run.target
    if target.quantize == "none":
        return _Built(fp32)
    if target.quantize == "fp16":
        return _Built(convert_fp16(fp32, run.work / "fp16.onnx"), method="float16")
    quantizer, method, reason = _int8_quantizer(run, fp32)
    report.method = method
    try:
        first = quantizer.quantize()
    except Exception as err:  # onnxruntime raises assorted types for unsupported graphs
        if method != "static":
            raise QuantizationError(f"int8 quantization failed: {type(err).__name__}: {err}") from err
        quantizer, method = _dynamic(run, fp32), "dynamic"
        reason = f"static quantization failed ({type(err).__name__}: {str(err)[:200]}); used dynamic instead"
        report.method = method
        first = quantizer.quantize()
    built = _Built(
        first,
        method=method,
        method_reason=reason,
        per_channel=quantizer.per_channel,
        calibration_samples=_calibration_count(run) if method == "static" else 0,
    )
    budget = target.budgets.max_accuracy_drop
    first_drop = run.drop(run.evaluate_onnx(first))
    if budget is None or not run.options.accuracy_aware or first_drop <= budget:
        return built
    sensitivity_count = min(run.options.sensitivity_samples, len(run.labels))
    probe_feeds = slice_feeds(run.feeds, 0, sensitivity_count)
    reference = fp32_logits[:sensitivity_count]

    def error_of(path: Path) -> float:
        return logit_error(reference, batched_logits(OrtRunner(path), probe_feeds, run.options.eval_batch_size))

    def drop_of(path: Path) -> float:
        return run.drop(run.evaluate_onnx(path))

    max_size = target.budgets.max_size_mb
    built.fallback = accuracy_aware(
        quantizer,
        first,
        first_drop,
        max_drop=budget,
        drop_of=drop_of,
        error_of=error_of,
        max_size_bytes=None if max_size is None else int(max_size * 1e6),
        max_layers=run.options.max_fallback_layers,
    )
    built.path = built.fallback.model
    return built


def _int8_quantizer(run: _Run, fp32: Path) -> tuple[Int8Quantizer, str, str]:
    if run.inputs.kind == "text":
        reason = (
            "dynamic: transformer activations change range from input to input, so their int8 scales are "
            "computed at run time; MatMul and embedding (Gather) weights are int8"
        )
        return _dynamic(run, fp32), "dynamic", reason
    calibration = _calibration_feeds(run)
    reason = (
        f"static: CNN activations are calibrated (MinMax) on {_calibration_count(run)} eval examples; weights "
        "int8 per channel, activations uint8, QDQ format (onnxruntime fuses it into QLinearConv; dynamic "
        "ConvInteger is slower than fp32 on CPU)"
    )
    try:
        return Int8Quantizer(fp32, run.work / "int8", "static", calibration), "static", reason
    except Exception as err:  # quant_pre_process fails on some graphs (symbolic shape inference)
        reason = f"static quantization could not prepare the graph ({type(err).__name__}: {str(err)[:200]}); dynamic"
        return _dynamic(run, fp32), "dynamic", reason


def _dynamic(run: _Run, fp32: Path) -> Int8Quantizer:
    return Int8Quantizer(fp32, run.work / "int8-dynamic", "dynamic")


def _calibration_count(run: _Run) -> int:
    return min(run.options.calibration_samples, len(run.labels))


def _calibration_feeds(run: _Run, batch: int = 8) -> list[Feeds]:
    count = _calibration_count(run)
    return [slice_feeds(run.feeds, start, min(start + batch, count)) for start in range(0, count, batch)]


def _opset_of(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((item.version for item in model.opset_import if item.domain in ("", "ai.onnx")), None)


def _measure(run: _Run, report: ExportReport, built: _Built, files: list[Path]) -> None:
    """The checks on the files as published: accuracy, parity, size, latency."""
    options = run.options
    primary = files[0]
    if primary.suffix == ".pt":
        runner: Any = TorchRunner(load_torchscript(primary))
        timed: Any = TorchRunner(load_torchscript(primary), threads=options.threads)
        runtime = f"torchscript {torch.__version__} CPU"
    else:
        import onnxruntime as ort

        runner = None
        timed = OrtRunner(primary, threads=options.threads)
        runtime = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    logits = run.evaluate(runner) if runner is not None else run.evaluate_onnx(primary)
    report.exported_accuracy = accuracy(logits, run.labels)
    report.accuracy_drop = run.drop(logits)
    report.parity = parity(run.torch_logits[: run.parity_count], logits[: run.parity_count])
    report.size_bytes = sum(path.stat().st_size for path in files)
    one = slice_feeds(run.feeds, 0, 1)
    report.latency_ms = measure_latency(
        lambda: timed(one),
        runs=options.latency_runs,
        warmup=options.warmup_runs,
        threads=options.threads,
        runtime=runtime,
    )
    if built.fallback is not None:
        report.kept_fp32_layers = [layer.module for layer in built.fallback.kept]


def check_budgets(
    report: ExportReport, budgets: ExportBudgets, fallback: FallbackResult | None = None
) -> list[BudgetCheck]:
    """Each budget the spec sets against the report's measurements, with what to try on a miss."""
    checks = []
    quantize = report.quantize
    if budgets.max_size_mb is not None and report.size_bytes is not None:
        hint = {
            "none": "try quantize: int8 (about 4x smaller) or fp16 (2x), or a smaller model",
            "fp16": "try quantize: int8 (about half the fp16 size), or a smaller model",
        }.get(quantize, "int8 is already on: try a smaller model (fewer layers, a distilled variant)")
        if report.kept_fp32_layers:
            hint += f", or a looser maxAccuracyDrop so fewer than {len(report.kept_fp32_layers)} layers stay in fp32"
        checks.append(BudgetCheck("maxSizeMB", budgets.max_size_mb, report.size_bytes / 1e6, "MB", hint))
    if budgets.max_latency_ms is not None and report.latency_ms is not None:
        threads = report.latency_ms.threads
        base = "a smaller model, or a shorter maxLength / smaller imageSize"
        hint = f"try quantize: int8, {base}" if quantize != "int8" else f"try {base}"
        hint += f" (measured with {threads} CPU thread{'s' if threads != 1 else ''} at batch 1)"
        checks.append(BudgetCheck("maxLatencyMs", budgets.max_latency_ms, report.latency_ms.p95_ms, "ms", hint))
    if budgets.max_accuracy_drop is not None and report.accuracy_drop is not None:
        if quantize == "int8":
            hint = "try quantize: fp16 or none, or a looser maxAccuracyDrop"
            if fallback is not None and fallback.sensitivity:  # the search ran
                hint = (
                    f"accuracy-aware int8 kept {len(fallback.kept)} layer(s) in fp32 and stopped: {fallback.stopped}; "
                    + hint
                )
        elif quantize == "fp16":
            hint = "try quantize: none, or a looser maxAccuracyDrop"
        else:
            hint = "the unquantized export should not lose accuracy: compare parity and report it"
        hint += f" (measured on {report.eval_samples} eval examples)"
        checks.append(BudgetCheck("maxAccuracyDrop", budgets.max_accuracy_drop, report.accuracy_drop, "pt", hint))
    return checks


def _conclude(report: ExportReport, budgets: ExportBudgets, built: _Built | None) -> None:
    if built is None:  # the graph itself failed; report.message says why
        return
    report.budgets = check_budgets(report, budgets, built.fallback)
    misses = [check for check in report.budgets if not check.passed]
    what = f"{report.format}" + ("" if report.quantize == "none" else f" {report.quantize}")
    if built.method in ("dynamic", "static"):
        what += f" ({built.method})"
    assert report.latency_ms is not None and report.size_bytes is not None and report.accuracy_drop is not None
    summary = (
        f"{what}: {report.size_bytes / 1e6:.2f} MB, p95 {report.latency_ms.p95_ms:.2f} ms "
        f"({report.latency_ms.threads} thread{'s' if report.latency_ms.threads != 1 else ''}), "
        f"accuracy drop {report.accuracy_drop:.2f} pt"
    )
    if report.kept_fp32_layers:
        summary += f", {len(report.kept_fp32_layers)} layer(s) kept in fp32"
    if misses:
        report.phase = "Failed"
        report.message = "; ".join(check.message() for check in misses) + f" [{summary}]"
    else:
        report.phase = "Succeeded"
        report.message = f"exported {summary}"


# --- the manifest ----------------------------------------------------------------------------


def file_entries(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every file of the export but the manifest, with its size and sha256."""
    return {
        path.relative_to(out_dir).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(out_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def build_manifest(
    report: ExportReport,
    built: _Built | None,
    run: _Run,
    header: dict[str, Any],
    artifact_dir: Path,
    out_dir: Path,
    source_uri: str | None,
) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    files = file_entries(out_dir) if built is not None else {}
    primary = next((name for name in ("model.onnx", "model.pt") if name in files), None)
    inputs, outputs = run.inputs.signature(len(header["labels"]))
    preprocessing = run.inputs.prep.to_dict()
    if run.inputs.kind == "text":
        preprocessing["tokenizer"] = TOKENIZER_DIR
    manifest: dict[str, Any] = {
        "kind": "EdgetuneExport",
        "formatVersion": MANIFEST_VERSION,
        **report.to_dict(),
        "artifact": primary,
        "sha256": files[primary]["sha256"] if primary else None,
        "files": files,
        "opset": built.opset if built else None,
        "exporter": (built.exporter if built else None) if run.target.format == "onnx" else "torch.jit.trace",
        "quantization": _quantization_entry(report, built),
        "task": header["task"],
        "labels": header["labels"],
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": preprocessing,
        "source": _source_entry(header, artifact_dir, source_uri),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "createdAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return manifest


def _quantization_entry(report: ExportReport, built: _Built | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"mode": report.quantize}
    if built is None or report.quantize == "none":
        return entry
    if report.quantize == "fp16":
        return {**entry, "method": "float16", "keepIoTypes": True}
    entry.update(
        method=built.method,
        reason=built.method_reason,
        weightType="int8",
        activationType="uint8",
        perChannel=built.per_channel,
        calibrationSamples=built.calibration_samples,
        keptFp32Layers=[],
    )
    fallback = built.fallback
    if fallback is not None:
        entry["keptFp32Layers"] = [layer.to_dict() for layer in fallback.kept]
        entry["accuracyAware"] = {
            "stopped": fallback.stopped,
            "attempts": [attempt.to_dict() for attempt in fallback.attempts],
            # Every probe in measurement order: blocks first, then the layers of the blocks reached.
            "sensitivity": [probe.to_dict() for probe in fallback.sensitivity],
        }
    return entry


def _source_entry(header: dict[str, Any], artifact_dir: Path, source_uri: str | None) -> dict[str, Any]:
    """Which trained model this export came from: the artifact's header sha256 covers every file of it
    (the header lists their sha256), and the trainer's own fields (checkpoint, step, ...) are kept."""
    skip = {"files", "labels", "preprocessing", "formatVersion", "task", "head"}
    return {
        "uri": source_uri or str(artifact_dir),
        "headerSha256": sha256_file(artifact_dir / ARTIFACT_FILE),
        **{key: value for key, value in header.items() if key not in skip},
    }


# --- publishing ------------------------------------------------------------------------------


def failed_report(target: ExportTarget, message: str, uri: str | None) -> ExportReport:
    return ExportReport(target.name, "Failed", message, uri=uri, format=target.format, quantize=target.quantize)


def write_failure_manifest(out_dir: Path, report: ExportReport, source_uri: str | None) -> None:
    """A manifest for an export that never got as far as a model (corrupt artifact, no eval data, ...)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "kind": "EdgetuneExport",
        "formatVersion": MANIFEST_VERSION,
        **report.to_dict(),
        "artifact": None,
        "files": {},
        "source": {"uri": source_uri},
        "createdAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def publish(out_dir: Path, storage: JobStorage, key: str, report: ExportReport) -> str:
    """Upload the export at `out_dir` to `key` so that no reader ever pairs a manifest with files it does
    not describe.

    The manifest is the commit record: readers (`edgetune predict`, the operator) read manifest.json
    first and then only the files it lists, checking each one's sha256. So (1) the previous manifest is
    deleted before anything else changes, then the rest of the old folder; (2) model files go up next
    (each S3 PUT is atomic: an object is either absent or whole); (3) manifest.json is written last
    (`JobStorage.upload_dir(last=...)`). A reader sees no export, or a complete one. A Failed export
    publishes only its manifest (phase Failed, with every check), never a model that missed its budget.
    """
    if storage.exists(f"{key}/{MANIFEST}"):
        storage.filesystem.delete_file(storage.path(f"{key}/{MANIFEST}"))
    storage.delete_dir(key)
    if storage.bucket is None:
        # A local folder (file:// storage) needs its directories made; S3 has none to make.
        folders = [key] + [
            f"{key}/{path.relative_to(out_dir).as_posix()}" for path in out_dir.rglob("*") if path.is_dir()
        ]
        for folder in folders:
            storage.filesystem.create_dir(storage.path(folder), recursive=True)
    if report.succeeded:
        storage.upload_dir(out_dir, key, last=(MANIFEST,))
    else:
        storage.write_bytes(f"{key}/{MANIFEST}", (out_dir / MANIFEST).read_bytes())
    return storage.uri(key)


def run_target(
    config: TrainJobConfig,
    target: ExportTarget,
    examples: Sequence[tuple[Any, int]] | Callable[[], Sequence[tuple[Any, int]]],
    workdir: Path,
    *,
    artifact_dir: Path | None = None,
    options: ExportOptions | None = None,
) -> ExportReport:
    """Export one target of a job: fetch the final artifact (storage key `model`, unless a local
    `artifact_dir` is given), build and check, publish to `exports/<target>/`. `examples` may be a
    function that loads them, so that a data error too ends as a published Failed report. Returns the
    report; failures of the model or the data become a Failed report (also published); an unreachable
    storage raises StorageError."""
    storage = JobStorage(config.storage, config.namespace, config.name)
    key = f"exports/{target.name}"
    uri = storage.uri(key)
    source_uri = str(artifact_dir) if artifact_dir else storage.uri("model")
    out_dir = workdir / "export"
    try:
        if artifact_dir is None:
            artifact_dir = storage.download_dir("model", workdir / "model")
        items = examples() if callable(examples) else examples
        report = export_model(artifact_dir, target, items, out_dir, options=options, source_uri=source_uri, uri=uri)
    except (ArtifactError, ExportError, QuantizationError, StorageError) as err:
        report = failed_report(target, f"{type(err).__name__}: {err}", uri)
        write_failure_manifest(out_dir, report, source_uri)
    publish(out_dir, storage, key, report)
    return report
