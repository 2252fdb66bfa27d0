"""Edge export: the trained model artifact -> ONNX (or TorchScript) -> int8 / fp16 -> checks -> storage.

    export_model(artifact_dir, target, examples, out_dir)   local: build, check, write model + manifest.json

target.py runs it for one target of a job and publishes the result (edgetune-export); candidates.py
runs it for each candidate of a target with a distill section.

The stages live next door: graph.py (ONNX / TorchScript), quantize.py, checks.py (measurements and
budgets), manifest.py (the manifest and publishing); state.py holds what they share, report.py what
they found.

Every check is recorded in the report and the manifest, whatever its outcome:
- graph parity: the fp32 ONNX graph against the torch model on N eval samples; a graph that does not
  reproduce torch (beyond float reordering) is an export bug and fails the export;
- parity of the published artifact against torch (max abs logit diff, label agreement);
- accuracy of the torch model and of the artifact on the eval examples, and the drop in points;
- size of the model file(s); p50/p95 latency at batch 1 on onnxruntime CPU with pinned threads;
- budgets (maxSizeMB, maxLatencyMs on p95, maxAccuracyDrop): a miss fails the export and the message
  says which budget, by how much and what to try.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetune_trainer.config import ExportTarget
from edgetune_trainer.export.checks import conclude, measure
from edgetune_trainer.export.graph import (
    consolidate_external_data,
    export_onnx,
    export_torchscript,
    opset_of,
    save_onnx,
)
from edgetune_trainer.export.inference import (
    Feeds,
    ModelInputs,
    OrtRunner,
    TorchRunner,
    accuracy,
    batched_logits,
    load_torchscript,
    logits_module,
    parity,
    slice_feeds,
)
from edgetune_trainer.export.manifest import build_manifest
from edgetune_trainer.export.quantize import (
    Int8Quantizer,
    QuantizationError,
    accuracy_aware,
    convert_fp16,
    logit_error,
    model_bytes,
)
from edgetune_trainer.export.report import (
    MANIFEST,
    TOKENIZER_DIR,
    ExportError,
    ExportOptions,
    ExportReport,
)
from edgetune_trainer.export.state import BuiltModel, ExportRun
from edgetune_trainer.model.artifact import Preprocessing
from edgetune_trainer.model.loading import load_artifact


def export_model(
    artifact_dir: Path,
    target: ExportTarget,
    examples: Sequence[tuple[Any, int]],
    out_dir: Path,
    *,
    options: ExportOptions | None = None,
    source_uri: str | None = None,
    uri: str | None = None,
    reference_accuracy: float | None = None,
) -> ExportReport:
    """Build the export of `target` from the artifact at `artifact_dir` into `out_dir` (model files,
    tokenizer for text models, manifest.json) and return the report. Budget misses and unfaithful graphs
    give a Failed report; a corrupt artifact raises ArtifactError, unusable input ExportError. The accuracy
    drop is measured from `reference_accuracy` when given (a student's, from its teacher's), else from the
    artifact's own torch accuracy."""
    options = options or ExportOptions()
    if not examples:
        raise ExportError("no eval examples: the exporter needs some to check parity, accuracy and latency")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    loaded, header = load_artifact(artifact_dir)
    with tempfile.TemporaryDirectory(prefix="edgetune-export-") as scratch:
        run = _prepare(loaded, header, target, examples, options, Path(scratch))
        run.reference_accuracy = reference_accuracy
        report = ExportReport(
            name=target.name,
            phase="Succeeded",
            message="",
            uri=uri,
            format=target.format,
            quantize=target.quantize,
            torch_accuracy=run.torch_accuracy,
            reference_accuracy=reference_accuracy,
            eval_samples=len(run.labels),
        )
        built, model_files = _build(run, report, out_dir)
        if built is not None:
            measure(run, report, built, model_files)
        if loaded.tokenizer is not None and built is not None:
            loaded.tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)
        conclude(report, target.budgets, built)
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
) -> ExportRun:
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
    return ExportRun(target, options, inputs, feeds, labels, module, torch_logits, accuracy(torch_logits, labels), work)


def _build(run: ExportRun, report: ExportReport, out_dir: Path) -> tuple[BuiltModel | None, list[Path]]:
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
        return BuiltModel(path), [path]
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
    built.opset, built.exporter = opset_of(built.path), options.exporter
    files = save_onnx(built.path, out_dir / "model.onnx", options.external_data_threshold)
    return built, files


def _faithful(run: ExportRun, report: ExportReport) -> bool:
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


def _quantized(run: ExportRun, report: ExportReport, fp32: Path, fp32_logits: np.ndarray) -> BuiltModel:
    target = run.target
    if target.quantize == "none":
        return BuiltModel(fp32)
    if target.quantize == "fp16":
        return BuiltModel(convert_fp16(fp32, run.work / "fp16.onnx"), method="float16")
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
    built = BuiltModel(
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


def _int8_quantizer(run: ExportRun, fp32: Path) -> tuple[Int8Quantizer, str, str]:
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


def _dynamic(run: ExportRun, fp32: Path) -> Int8Quantizer:
    return Int8Quantizer(fp32, run.work / "int8-dynamic", "dynamic")


def _calibration_count(run: ExportRun) -> int:
    return min(run.options.calibration_samples, len(run.labels))


def _calibration_feeds(run: ExportRun, batch: int = 8) -> list[Feeds]:
    count = _calibration_count(run)
    return [slice_feeds(run.feeds, start, min(start + batch, count)) for start in range(0, count, batch)]
