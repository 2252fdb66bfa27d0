"""The export targets of a local run, one after the other, with the exporter of `edgetune-export`
(`export.target.run_target`: build, check, publish to `exports/<target>/`).

A target is not built again when its published manifest says it succeeded from this very model (the
sha256 of the model's header, which lists the sha256 of every model file) with the same format,
quantization, opset and budgets: a second `edgetune run` of a finished job then takes seconds. A target
with `distill` is matched on its teacher's header, its student's header and its distill spec, whichever
candidate it published.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetune_trainer.config import ExportTarget, TrainJobConfig
from edgetune_trainer.export.cli import load_examples
from edgetune_trainer.export.report import MANIFEST
from edgetune_trainer.export.target import run_target
from edgetune_trainer.model.artifact import ARTIFACT_FILE, MODEL_KEY, student_key
from edgetune_trainer.storage.job import JobStorage

EVAL_LIMIT = 1000  # eval examples for the export checks, as edgetune-export's default


def export_entry(record: dict[str, Any], reused: bool) -> dict[str, Any]:
    """The summary of one export, from an `ExportReport.to_dict()` or a published manifest (which holds
    the same fields): latencyMs is the p95 at batch 1, as in status.exports[]."""
    checks = [
        {key: check[key] for key in ("budget", "limit", "measured", "unit", "passed", "message")}
        for check in record.get("budgets") or []
    ]
    return {
        "name": record["name"],
        "phase": record["phase"],
        "message": record["message"],
        "uri": record.get("uri"),
        "sizeBytes": record.get("sizeBytes"),
        "latencyMs": (record.get("latencyMs") or {}).get("p95"),
        "accuracyDrop": record.get("accuracyDrop"),
        "budgets": checks,
        "budgetsMet": record["phase"] == "Succeeded" and all(check["passed"] for check in checks),
        "reused": reused,
        **(
            {"candidate": record.get("candidate"), "candidates": record["candidates"]}
            if record.get("candidates")
            else {}
        ),
    }


def published_export(storage: JobStorage, target: ExportTarget, model_sha256: str) -> dict[str, Any] | None:
    """The manifest of a successful export of this model with this target's settings, or None."""
    key = f"exports/{target.name}/{MANIFEST}"
    if not storage.exists(key):
        return None
    manifest = json.loads(storage.read_bytes(key))
    budgets = target.budgets.model_dump(by_alias=True, exclude_none=True)
    if target.distill is not None:  # published from one of its candidates: match teacher, student and spec
        distill = manifest.get("distill") or {}
        student_header = f"{student_key(target.name)}/{MODEL_KEY}/{ARTIFACT_FILE}"
        student_sha256 = hashlib.sha256(storage.read_bytes(student_header)).hexdigest()
        same = (
            manifest.get("phase") == "Succeeded"
            and (distill.get("teacher") or {}).get("headerSha256") == model_sha256
            and distill.get("studentHeaderSha256") == student_sha256
            and distill.get("spec") == target.distill.to_dict()
            and manifest.get("opset") == target.opset
            and {check["budget"]: check["limit"] for check in manifest.get("budgets") or []} == budgets
        )
        return manifest if same else None
    same = (
        manifest.get("phase") == "Succeeded"
        and (manifest.get("source") or {}).get("headerSha256") == model_sha256
        and manifest.get("format") == target.format
        and manifest.get("quantize") == target.quantize
        and (target.format != "onnx" or manifest.get("opset") == target.opset)
        and {check["budget"]: check["limit"] for check in manifest.get("budgets") or []} == budgets
    )
    return manifest if same else None


def run_exports(
    config: TrainJobConfig,
    base_dir: Path,
    storage: JobStorage,
    *,
    rebuild: bool,
    on_start: Callable[[ExportTarget], None],
    on_done: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Every export target of the job (reusing matching published ones unless `rebuild`); the summary
    entry of each, in spec order."""
    model_sha256 = hashlib.sha256(storage.read_bytes(f"{MODEL_KEY}/{ARTIFACT_FILE}")).hexdigest()
    entries = []
    for target in config.export:
        on_start(target)
        manifest = None if rebuild else published_export(storage, target, model_sha256)
        if manifest is not None:
            entry = export_entry(manifest, reused=True)
        else:
            with tempfile.TemporaryDirectory(prefix="edgetune-export-") as scratch:
                report = run_target(config, target, lambda: load_examples(config, EVAL_LIMIT, base_dir), Path(scratch))
            entry = export_entry(report.to_dict(), reused=False)
        on_done(entry)
        entries.append(entry)
    return entries
