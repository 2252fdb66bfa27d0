"""The checks on an export as published (accuracy, parity, size, p50/p95 latency) and the budgets
(maxSizeMB, maxLatencyMs on p95, maxAccuracyDrop): a miss fails the export, and the message says which
budget, by how much and what to try.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgetune_trainer.config import ExportBudgets
from edgetune_trainer.export.inference import (
    OrtRunner,
    TorchRunner,
    accuracy,
    load_torchscript,
    measure_latency,
    parity,
    slice_feeds,
)
from edgetune_trainer.export.quantize import (
    FallbackResult,
)
from edgetune_trainer.export.report import BudgetCheck, ExportReport
from edgetune_trainer.export.state import BuiltModel, ExportRun


def measure(run: ExportRun, report: ExportReport, built: BuiltModel, files: list[Path]) -> None:
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


def conclude(report: ExportReport, budgets: ExportBudgets, built: BuiltModel | None) -> None:
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
