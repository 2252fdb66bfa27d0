"""What the stages of one export share: the encoded eval examples and the torch model's logits
(`ExportRun`), and the model chosen for publication with how it was made (`BuiltModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgetune_trainer.config import ExportTarget
from edgetune_trainer.export.inference import (
    Feeds,
    ModelInputs,
    OrtRunner,
    accuracy,
    batched_logits,
)
from edgetune_trainer.export.quantize import (
    FallbackResult,
    model_bytes,
)
from edgetune_trainer.export.report import ExportOptions
from edgetune_trainer.model.artifact import sha256_file


@dataclass
class ExportRun:
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
    # The accuracy drops are measured from: the torch model's own, or a distillation's teacher's.
    reference_accuracy: float | None = None
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
        reference = self.torch_accuracy if self.reference_accuracy is None else self.reference_accuracy
        return (reference - accuracy(logits, self.labels)) * 100.0

    @property
    def parity_count(self) -> int:
        return min(self.options.parity_samples, len(self.labels))


@dataclass
class BuiltModel:
    """The model chosen for publication (in the work folder) and how it was made."""

    path: Path
    method: str | None = None
    method_reason: str | None = None
    per_channel: bool | None = None
    calibration_samples: int = 0
    fallback: FallbackResult | None = None
    opset: int | None = None
    exporter: str | None = None
