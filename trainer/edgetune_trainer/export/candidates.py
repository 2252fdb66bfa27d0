"""The search across techniques, for an export target with a `distill` section.

    export_candidates(teacher_dir, student_dir, target, examples, out_dir, ...)   build each, keep the best

Three candidates are built and checked as any export is (pipeline.export_model), in this order:
1. the teacher, quantized as the target says (`teacher-int8` for quantize: int8, with accuracy-aware int8);
2. the distilled (and pruned) student in fp32 (`student`);
3. the student in int8 (`student-int8`).
Every accuracy drop is measured from the teacher's torch accuracy on the same eval examples, so a student
pays for what distillation lost as well as what quantization lost. The smallest candidate that meets every
budget is published (ties: the smaller accuracy drop); every candidate, chosen or not, is listed with its
figures in the report, the manifest and status.exports[].candidates. When none meets the budgets, the
target fails and the message gives each candidate's misses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune_trainer.config import ExportTarget
from edgetune_trainer.export.manifest import write_failure_manifest
from edgetune_trainer.export.pipeline import export_model
from edgetune_trainer.export.report import MANIFEST, ExportOptions, ExportReport
from edgetune_trainer.model.artifact import ARTIFACT_FILE, sha256_file


@dataclass(frozen=True)
class Candidate:
    name: str
    model: str  # teacher | student
    quantize: str


def candidates_for(target: ExportTarget) -> list[Candidate]:
    teacher = "teacher" if target.quantize == "none" else f"teacher-{target.quantize}"
    return [
        Candidate(teacher, "teacher", target.quantize),
        Candidate("student", "student", "none"),
        Candidate("student-int8", "student", "int8"),
    ]


def candidate_entry(candidate: Candidate, report: ExportReport) -> dict[str, Any]:
    """One candidate's figures: what a user compares to choose (and what the search compared)."""
    return {
        "name": candidate.name,
        "model": candidate.model,
        "quantize": candidate.quantize,
        "phase": report.phase,
        "sizeBytes": report.size_bytes,
        "latencyMs": None if report.latency_ms is None else round(report.latency_ms.p95_ms, 4),
        "accuracy": report.exported_accuracy,
        "accuracyDrop": None if report.accuracy_drop is None else round(report.accuracy_drop, 4),
        "missedBudgets": [check.budget for check in report.budgets if not check.passed],
        "message": report.message,
    }


def choose(entries: Sequence[dict[str, Any]]) -> int | None:
    """The index of the smallest candidate that met every budget (ties: the smaller drop), or None."""
    met = [i for i, entry in enumerate(entries) if entry["phase"] == "Succeeded" and entry["sizeBytes"] is not None]
    if not met:
        return None
    return min(met, key=lambda i: (entries[i]["sizeBytes"], entries[i]["accuracyDrop"] or 0.0))


def export_candidates(
    teacher_dir: Path,
    student_dir: Path,
    target: ExportTarget,
    examples: Sequence[tuple[Any, int]],
    out_dir: Path,
    *,
    options: ExportOptions | None = None,
    teacher_uri: str | None = None,
    student_uri: str | None = None,
    uri: str | None = None,
) -> ExportReport:
    """Build and check every candidate (in folders next to `out_dir`), publish the chosen one's into
    `out_dir` and return its report, with every candidate listed."""
    assert target.distill is not None
    entries: list[dict[str, Any]] = []
    reports: list[ExportReport] = []
    reference: float | None = None
    for candidate in candidates_for(target):
        variant = target.model_copy(update={"quantize": candidate.quantize, "distill": None})
        teacher = candidate.model == "teacher"
        report = export_model(
            teacher_dir if teacher else student_dir,
            variant,
            examples,
            out_dir.parent / f"candidate-{candidate.name}",
            options=options,
            source_uri=teacher_uri if teacher else student_uri,
            uri=uri,
            reference_accuracy=None if teacher else reference,
        )
        if teacher:
            reference = report.torch_accuracy
        reports.append(report)
        entries.append(candidate_entry(candidate, report))
    distill_record = {
        "spec": target.distill.to_dict(),
        "teacher": {"uri": teacher_uri, "headerSha256": sha256_file(teacher_dir / ARTIFACT_FILE)},
        "studentHeaderSha256": sha256_file(student_dir / ARTIFACT_FILE),
        "student": (json.loads((student_dir / ARTIFACT_FILE).read_text()).get("distill") or {}).get("student"),
    }
    chosen = choose(entries)
    if out_dir.exists():  # an earlier export's files: this one publishes a model or only its manifest
        shutil.rmtree(out_dir)
    if chosen is None:
        report = ExportReport(
            target.name,
            "Failed",
            "no candidate met the budgets: "
            + "; ".join(f"{e['name']}: {e['message']}" for e in entries)
            + ". Try a larger student (student.layers), more distillation epochs, or looser budgets",
            uri=uri,
            format=target.format,
            quantize=target.quantize,
            torch_accuracy=reference,
            candidates=entries,
        )
        write_failure_manifest(out_dir, report, teacher_uri)
        _amend_manifest(out_dir, {"distill": distill_record})
        return report
    name = entries[chosen]["name"]
    report = reports[chosen]
    report.name, report.candidate, report.candidates = target.name, name, entries
    report.message = f"{name} (the smallest of {len(entries)} candidates meeting the budgets): {report.message}"
    shutil.move(out_dir.parent / f"candidate-{name}", out_dir)
    _amend_manifest(out_dir, {**report.to_dict(), "distill": distill_record})
    return report


def _amend_manifest(out_dir: Path, fields: dict[str, Any]) -> None:
    path = out_dir / MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
