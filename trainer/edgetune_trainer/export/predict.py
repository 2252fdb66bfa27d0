"""`edgetune predict ARTIFACT INPUT`: run an exported model on one input and print its label.

ARTIFACT is an export folder (`exports/<target>/`: local, or an s3:// URI) and INPUT a text or an image
path, as the model's task says. Only the export is used (the ONNX file, its manifest, the tokenizer it
carries) and onnxruntime runs it: if this works, the artifact is self-sufficient. Every file is checked
against the sha256 in manifest.json before it is used, so a corrupt or half-copied export is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune_trainer.config import StorageSpec
from edgetune_trainer.export.inference import ModelInputs, OrtRunner, TorchRunner, load_torchscript, softmax
from edgetune_trainer.model.artifact import Preprocessing, checksum_problem, read_record
from edgetune_trainer.rules import parse_s3_uri

MANIFEST = "manifest.json"  # the same name as export.MANIFEST; kept here so predict imports no exporter


class ExportIntegrityError(RuntimeError):
    """An export folder is incomplete, corrupt, or the record of a failed export."""


def read_manifest(folder: Path) -> dict[str, Any]:
    manifest = read_record(folder, MANIFEST, "a published export", ExportIntegrityError)
    if manifest.get("phase") != "Succeeded":
        raise ExportIntegrityError(
            f"export {manifest.get('name')!r} failed and has no model: {manifest.get('message')}"
        )
    return manifest


def verify_export(folder: Path) -> dict[str, Any]:
    """The manifest, after checking that every file it lists exists with its recorded sha256."""
    manifest = read_manifest(folder)
    problem = checksum_problem(
        folder, {name: entry["sha256"] for name, entry in manifest["files"].items()}, "the manifest"
    )
    if problem:
        raise ExportIntegrityError(f"export {problem}; copy the export again")
    return manifest


def fetch_export(uri: str, dest: Path, endpoint: str | None = None, region: str = "us-east-1") -> Path:
    """Download the export at an s3:// URI into `dest`: the manifest first, then exactly the files it
    lists (not whatever else lies in the folder), which `verify_export` then checks."""
    from edgetune_trainer.storage.job import JobStorage

    bucket, key = parse_s3_uri(uri)
    parts = key.split("/")
    if len(parts) < 2:
        raise ExportIntegrityError(f"{uri} is not an export folder (expected s3://BUCKET/.../exports/TARGET)")
    # JobStorage addresses `<uri>/<namespace>/<job>/<key>`: the last two segments of the folder play
    # namespace and job, so its retrying reads serve any export folder.
    prefix = "/".join(parts[:-2])
    spec = StorageSpec(uri=f"s3://{bucket}/{prefix}".rstrip("/"), endpoint=endpoint, region=region)
    storage = JobStorage(spec, parts[-2], parts[-1])
    dest.mkdir(parents=True, exist_ok=True)
    manifest_bytes = storage.read_bytes(MANIFEST)
    manifest = json.loads(manifest_bytes)
    for name in manifest.get("files", {}):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(name))
    (dest / MANIFEST).write_bytes(manifest_bytes)
    return dest


@dataclass
class ExportedClassifier:
    """An export folder ready to classify raw inputs."""

    folder: Path
    manifest: dict[str, Any]
    inputs: ModelInputs
    runner: Any

    @classmethod
    def load(cls, folder: Path, threads: int = 0) -> ExportedClassifier:
        manifest = verify_export(folder)
        prep = Preprocessing.from_dict(manifest["preprocessing"])
        tokenizer = None
        if prep.kind == "text":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder / manifest["preprocessing"]["tokenizer"]))
        model = folder / manifest["artifact"]
        runner = (
            TorchRunner(load_torchscript(model), threads or None)
            if model.suffix == ".pt"
            else OrtRunner(model, threads)
        )
        return cls(folder, manifest, ModelInputs(prep, tokenizer), runner)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    def probabilities(self, raws: list[Any]) -> np.ndarray:
        return softmax(self.runner(self.inputs.encode(raws)))

    def predict(self, raw: Any) -> tuple[str, dict[str, float]]:
        probs = self.probabilities([raw])[0]
        return self.labels[int(probs.argmax())], {label: float(p) for label, p in zip(self.labels, probs, strict=True)}


def resolve(artifact: str, scratch: Path, endpoint: str | None, region: str) -> Path:
    """A local export folder for ARTIFACT (a folder, its manifest.json, or an s3:// URI)."""
    if artifact.startswith("s3://"):
        return fetch_export(artifact, scratch / "export", endpoint, region)
    path = Path(artifact[len("file://") :] if artifact.startswith("file://") else artifact)
    return path.parent if path.name == MANIFEST else path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetune predict", description="Classify one input with an exported model (onnxruntime CPU)."
    )
    parser.add_argument("artifact", metavar="ARTIFACT", help="export folder, its manifest.json, or s3://.../exports/T")
    parser.add_argument("input", metavar="INPUT", help="the text to classify, or an image path (image models)")
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"), help="S3-compatible endpoint URL")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgetune-predict-") as scratch:
        try:
            folder = resolve(args.artifact, Path(scratch), args.endpoint, args.region)
            classifier = ExportedClassifier.load(folder, args.threads)
            raw: Any = args.input
            if classifier.inputs.kind == "image" and not Path(raw).is_file():
                raise ExportIntegrityError(f"{raw!r} is not an image file (this export classifies images)")
            label, probabilities = classifier.predict(raw)
        except (RuntimeError, OSError, ValueError) as err:  # integrity, storage, unreadable input
            print(f"edgetune predict: {err}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({"label": label, "probabilities": probabilities}))
    else:
        print(label)
        for name, value in sorted(probabilities.items(), key=lambda item: -item[1]):
            print(f"  {name}\t{value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
