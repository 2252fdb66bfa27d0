"""What one export found: every check (graph parity, artifact parity, accuracy, size, latency), each
budget's verdict, and the phase; the options that steer an export; the names of its published files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edgetune_trainer.config import ExportTarget
from edgetune_trainer.export.inference import (
    LatencyStats,
    ParityStats,
)
from edgetune_trainer.export.quantize import (
    TWO_GB,
)

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
    reference_accuracy: float | None = None  # a distillation's teacher's torch accuracy, the drop's reference
    exported_accuracy: float | None = None
    eval_samples: int = 0
    parity: ParityStats | None = None  # the published artifact vs torch
    graph_parity: ParityStats | None = None  # the fp32 graph vs torch, before quantization
    kept_fp32_layers: list[str] = field(default_factory=list)
    budgets: list[BudgetCheck] = field(default_factory=list)
    candidate: str | None = None  # a target with distill: the candidate chosen (teacher-int8, student-int8, ...)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every candidate tried, with its figures

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
        missed = [check.budget for check in self.budgets if not check.passed]
        if missed:
            status["missedBudgets"] = missed
        if self.candidate:
            status["candidate"] = self.candidate
        if self.candidates:
            status["candidates"] = [candidate_status(entry) for entry in self.candidates]
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
                **({"reference": self.reference_accuracy} if self.reference_accuracy is not None else {}),
                "exported": self.exported_accuracy,
                "samples": self.eval_samples,
            },
            "parity": self.parity.to_dict() if self.parity else None,
            "graphParity": self.graph_parity.to_dict() if self.graph_parity else None,
            "keptFp32Layers": list(self.kept_fp32_layers),
            "budgets": [check.to_dict() for check in self.budgets],
            **({"candidate": self.candidate, "candidates": self.candidates} if self.candidates else {}),
        }


def candidate_status(entry: dict[str, Any]) -> dict[str, Any]:
    """A candidate's line in status.exports[].candidates: what `kubectl get -o yaml` needs to compare them."""
    keys = ("name", "phase", "sizeBytes", "latencyMs", "accuracy", "accuracyDrop")
    return {key: entry[key] for key in keys if entry.get(key) is not None}


def failed_report(target: ExportTarget, message: str, uri: str | None) -> ExportReport:
    return ExportReport(target.name, "Failed", message, uri=uri, format=target.format, quantize=target.quantize)
