"""The final model as a self-describing folder: weights, config, label names and preprocessing.

Layout of an artifact folder (`<job>/model/` in storage):

    edgetune-model.json   header: family, architecture, task, labels, preprocessing, file checksums
    model.safetensors     weights (for HF models together with config.json, as save_pretrained writes)
    config.json, tokenizer files   (HF models only)

`load_artifact` rebuilds a torch model from it with no training state and no hub access, which is
what the exporter and a later fine-tune need. Checksums let a reader detect a corrupt or partial copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune_trainer.models import ARTIFACT_FILE, LoadedModel, ModelLoadError, build_torchvision

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


def save_artifact(
    loaded: LoadedModel,
    folder: Path,
    *,
    task: str,
    labels: list[str],
    preprocessing: Preprocessing,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `loaded` (unwrapped from DDP) as an artifact folder; return its header."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    if loaded.family == "hf":
        model.save_pretrained(folder, safe_serialization=True)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(folder)
    else:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ARTIFACT_FILE
    }
    header = {
        "formatVersion": FORMAT_VERSION,
        "family": loaded.family,
        "architecture": loaded.architecture,
        "head": loaded.head,
        "task": task,
        "labels": labels,
        "preprocessing": preprocessing.to_dict(),
        "files": files,
        **(extra or {}),
    }
    (folder / ARTIFACT_FILE).write_text(json.dumps(header, indent=2, sort_keys=True))
    return header


def read_header(folder: Path) -> dict[str, Any]:
    path = folder / ARTIFACT_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} is not an edgetune model artifact: {ARTIFACT_FILE} is missing")
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is corrupt: {err}") from err
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


def load_artifact(folder: Path) -> tuple[LoadedModel, dict[str, Any]]:
    """Rebuild the trained model (eval mode, CPU) and return it with the artifact's header."""
    header = verify_artifact(folder)
    loaded = load_artifact_model(folder, header["labels"], header=header)
    loaded.model.eval()
    return loaded, header


def load_artifact_model(folder: Path, labels: list[str], header: dict[str, Any] | None = None) -> LoadedModel:
    """The artifact's model with a head for `labels` (the artifact's own head when the count matches)."""
    header = header or verify_artifact(folder)
    if header["family"] == "hf":
        from edgetune_trainer.models import _load_hf

        return _load_hf(str(folder), None, labels, origin=str(folder))
    from safetensors.torch import load_file

    model, head_name = build_torchvision(header["architecture"], None, len(header["labels"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    loaded = LoadedModel(model, "torchvision", header["architecture"], [head_name])
    if len(labels) != len(header["labels"]):
        from torch import nn

        from edgetune_trainer.models import _set_submodule

        old = model.get_submodule(head_name)
        _set_submodule(model, head_name, nn.Linear(old.in_features, len(labels)))
    return loaded


__all__ = ["ArtifactError", "ModelLoadError", "Preprocessing", "load_artifact", "save_artifact", "verify_artifact"]
