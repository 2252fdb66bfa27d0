"""One export target of a job, from storage to storage (what `edgetune-export --target` and `edgetune run` do).

    run_target(config, target, examples, workdir)   fetch the model, build and check, publish to exports/<target>/

A target with a `distill` section also fetches its student (`students/<target>/model`) and goes through
the candidates (candidates.py); any other target exports the job's model (pipeline.export_model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgetune_trainer.config import ExportTarget, TrainJobConfig
from edgetune_trainer.export.candidates import export_candidates
from edgetune_trainer.export.manifest import publish, write_failure_manifest
from edgetune_trainer.export.pipeline import export_model
from edgetune_trainer.export.quantize import QuantizationError
from edgetune_trainer.export.report import ExportError, ExportOptions, ExportReport, failed_report
from edgetune_trainer.model.artifact import ARTIFACT_FILE, MODEL_KEY, ArtifactError, student_key
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.storage.retry import StorageError


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
    source_uri = str(artifact_dir) if artifact_dir else storage.uri(MODEL_KEY)
    out_dir = workdir / "export"
    try:
        if artifact_dir is None:
            artifact_dir = storage.download_dir(MODEL_KEY, workdir / "model")
        items = examples() if callable(examples) else examples
        if target.distill is None:
            report = export_model(artifact_dir, target, items, out_dir, options=options, source_uri=source_uri, uri=uri)
        else:
            student = f"{student_key(target.name)}/{MODEL_KEY}"
            if not storage.exists(f"{student}/{ARTIFACT_FILE}"):
                raise ExportError(
                    f"no distilled student at {storage.uri(student)}: the distillation of {target.name} must "
                    "finish before its export"
                )
            report = export_candidates(
                artifact_dir,
                storage.download_dir(student, workdir / "student"),
                target,
                items,
                out_dir,
                options=options,
                teacher_uri=source_uri,
                student_uri=storage.uri(student),
                uri=uri,
            )
    except (ArtifactError, ExportError, QuantizationError, StorageError) as err:
        report = failed_report(target, f"{type(err).__name__}: {err}", uri)
        write_failure_manifest(out_dir, report, source_uri)
    publish(out_dir, storage, key, report)
    return report
