"""The final model as a self-describing folder: weights, config, label names and preprocessing.

Layout of an artifact folder (`<job>/model/` in storage, key `MODEL_KEY`):

    edgetune-model.json   header: family, architecture, task, labels, preprocessing, file checksums
    model.safetensors     weights (for HF models together with config.json, as save_pretrained writes)
    config.json, tokenizer files   (HF models only)

This module is the format (header, checksums, preprocessing) and needs no torch; `loading.py` writes an
artifact from a model and rebuilds one from it. Checksums let a reader detect a corrupt or partial copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_KEY = "model"

STUDENTS_KEY = "students"  # students/<target>/: a distillation's checkpoints and model, as the job's own


def student_key(target: str) -> str:
    """Where the student of export target `target` keeps its run (checkpoints/, model/)."""
    return f"{STUDENTS_KEY}/{target}"


FORMAT_VERSION = 1

IMAGENET_MEAN = [0.485, 0.456, 0.406]

IMAGENET_STD = [0.229, 0.224, 0.225]


class ArtifactError(RuntimeError):
    """An artifact folder is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become tensors: text is tokenized to maxLength; images resized and normalized."""

    kind: str  # "text" | "image"
    max_length: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_STD)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"kind": "text", "maxLength": self.max_length}
        return {"kind": "image", "imageSize": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        if data["kind"] == "text":
            return cls("text", max_length=int(data["maxLength"]))
        return cls("image", image_size=int(data["imageSize"]), mean=tuple(data["mean"]), std=tuple(data["std"]))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_problem(folder: Path, expected: dict[str, str], record: str) -> str | None:
    """What is wrong with the files of `folder` against the sha256 that `record` lists for them, or None."""
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{folder} is incomplete: {name} is missing"
        actual = sha256_file(path)
        if actual != digest:
            return f"{folder} is corrupt: {name} has sha256 {actual[:16]}…, {record} says {digest[:16]}…"
    return None


def read_record(folder: Path, name: str, what: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON file `name` that makes `folder` `what` (a model artifact's header, an export's manifest);
    `error` naming the folder when the file is missing or unreadable."""
    path = folder / name
    if not path.is_file():
        raise error(f"{folder} is not {what}: {name} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is corrupt: {err}") from err


def read_header(folder: Path) -> dict[str, Any]:
    path = folder / ARTIFACT_FILE
    header = read_record(folder, ARTIFACT_FILE, "an edgetune model artifact", ArtifactError)
    if header.get("formatVersion") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: unsupported artifact format {header.get('formatVersion')!r}")
    return header


def verify_artifact(folder: Path) -> dict[str, Any]:
    """The header, after checking every listed file exists with its recorded sha256."""
    header = read_header(folder)
    problem = checksum_problem(folder, header["files"], f"the header {ARTIFACT_FILE}")
    if problem:
        raise ArtifactError(f"artifact {problem}")
    return header


ARTIFACT_FILE = "edgetune-model.json"
