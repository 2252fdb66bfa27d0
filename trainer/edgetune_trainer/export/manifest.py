"""The manifest of an export (every check, the quantization chosen, the source, each file's sha256)
and publishing it to storage with the manifest as the commit record, written last.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch

from edgetune_trainer.export.report import MANIFEST, MANIFEST_VERSION, TOKENIZER_DIR, ExportReport
from edgetune_trainer.export.state import BuiltModel, ExportRun
from edgetune_trainer.model.artifact import ARTIFACT_FILE, sha256_file
from edgetune_trainer.storage.job import JobStorage


def file_entries(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every file of the export but the manifest, with its size and sha256."""
    return {
        path.relative_to(out_dir).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(out_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def build_manifest(
    report: ExportReport,
    built: BuiltModel | None,
    run: ExportRun,
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


def _quantization_entry(report: ExportReport, built: BuiltModel | None) -> dict[str, Any]:
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
