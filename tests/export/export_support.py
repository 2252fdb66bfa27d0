"""Helpers for the export tests (the fixtures that build trained models are in conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune_trainer.config import ExportTarget
from edgetune_trainer.export.pipeline import export_model
from edgetune_trainer.export.report import ExportOptions, ExportReport
from edgetune_trainer.model.artifact import Preprocessing
from edgetune_trainer.model.loading import LoadedModel

TEXT_LABELS = ["negative", "positive"]
IMAGE_LABELS = ["red", "green", "blue"]
TEXT_LENGTH = 32
IMAGE_SIZE = 32
# Fast measurement settings: the same checks, with fewer timed runs.
FAST = ExportOptions(latency_runs=10, warmup_runs=2)


@dataclass
class Trained:
    """A trained model, its artifact folder and held-out eval examples (raw input, label id)."""

    loaded: LoadedModel
    artifact: Path
    examples: list[tuple[Any, int]]
    labels: list[str]
    prep: Preprocessing


def target(name: str = "edge", **fields: Any) -> ExportTarget:
    """An ExportTarget from camelCase fields, as in a FineTuneJob spec."""
    return ExportTarget.model_validate({"name": name, **fields})


def run_export(
    trained: Trained,
    out: Path,
    options: ExportOptions = FAST,
    examples: list[tuple[Any, int]] | None = None,
    **fields: Any,
) -> tuple[ExportReport, dict[str, Any]]:
    """Export `trained` with a target built from `fields`; return the report and the written manifest."""
    report = export_model(
        trained.artifact, target(**fields), trained.examples if examples is None else examples, out, options=options
    )
    return report, json.loads((out / "manifest.json").read_text())
