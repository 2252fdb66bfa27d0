"""Training checkpoints in object storage: what one holds, how it is written, and finding the one
to resume from.

A checkpoint folder `checkpoints/checkpoint_<step>-<run>` holds `state.pt` (model, optimizer,
scheduler, grad scaler, step, epoch, position in the epoch, every rank's RNG state) and
`manifest.json` (step, epoch, size, sha256 of state.pt). Ray Train uploads the folder and enforces
keep-N. A checkpoint without a manifest (partial upload) or whose state does not match its sha256
(corrupt) is skipped with a warning naming it, and the previous one is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.storage.retry import StorageError

log = logging.getLogger(__name__)

CHECKPOINTS_KEY = "checkpoints"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_DIR_PATTERN = re.compile(r"^checkpoint_(\d{9})-([0-9a-z]+)$")


def dir_name(step: int, run_token: str) -> str:
    """Sortable by step; the run token keeps a step that is trained again (after a fallback) distinct."""
    return f"checkpoint_{step:09d}-{run_token}"


def capture_rng() -> dict[str, Any]:
    """This process's RNG states in a form `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(folder: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Write state.pt and its manifest into `folder`; return the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    torch.save(state, path)  # straight to the file: no in-memory copies of a model-sized buffer
    digest = hashlib.sha256()
    with path.open("rb") as file:  # read back from the page cache
        while chunk := file.read(8 << 20):
            digest.update(chunk)
    manifest = {
        "step": state["step"],
        "epoch": state["epoch"],
        "batchInEpoch": state["batch_in_epoch"],
        "worldSize": state["world_size"],
        "bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, sort_keys=True))
    return manifest


def upload_checkpoint(storage: JobStorage, folder: Path, name: str) -> str:
    """Upload a checkpoint folder written by `write_checkpoint`: state first, manifest last, so that a
    checkpoint without its manifest is never taken for whole. Raises StorageError when storage stays
    unreachable past the retry budget. Returns its path on `storage.filesystem` (for Ray Train)."""
    key = f"{CHECKPOINTS_KEY}/{name}"
    storage.upload_dir(folder, key, last=(MANIFEST_FILE,))
    return storage.path(key)


@dataclass
class ResumePoint:
    name: str
    uri: str
    manifest: dict[str, Any]
    state: dict[str, Any]


def list_checkpoints(storage: JobStorage) -> list[str]:
    """Checkpoint folder names, newest (highest step) first."""
    names = [n for n in storage.list_dirs(CHECKPOINTS_KEY) if _DIR_PATTERN.match(n)]
    return sorted(names, key=lambda n: (int(_DIR_PATTERN.match(n).group(1)), n), reverse=True)  # type: ignore[union-attr]


def _load(storage: JobStorage, name: str) -> ResumePoint:
    key = f"{CHECKPOINTS_KEY}/{name}"
    if not storage.exists(f"{key}/{MANIFEST_FILE}"):
        raise ValueError("no manifest.json (the upload did not finish)")
    manifest = json.loads(storage.read_bytes(f"{key}/{MANIFEST_FILE}"))
    if not storage.exists(f"{key}/{STATE_FILE}"):  # its upload failed after the manifest's went through
        raise ValueError("no state.pt (its upload did not finish)")
    data = storage.read_bytes(f"{key}/{STATE_FILE}")
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != manifest["bytes"] or digest != manifest["sha256"]:
        raise ValueError(
            f"state.pt is {len(data)} bytes with sha256 {digest[:12]}…, the manifest says "
            f"{manifest['bytes']} bytes, {manifest['sha256'][:12]}…"
        )
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return ResumePoint(name, storage.uri(key), manifest, state)


def find_resume_point(storage: JobStorage) -> ResumePoint | None:
    """The newest intact checkpoint of this job, or None. Damaged ones are skipped with a warning."""
    for name in list_checkpoints(storage):
        try:
            return _load(storage, name)
        except StorageError:
            raise
        except Exception as err:  # a damaged checkpoint can fail in json, torch.load or our check
            log.warning(
                "skipping checkpoint %s: %s; falling back to the previous one",
                storage.uri(f"{CHECKPOINTS_KEY}/{name}"),
                err,
            )
    return None


def newest_complete(storage: JobStorage) -> tuple[str, dict[str, Any]] | None:
    """The newest checkpoint whose manifest is written and whose state.pt has the size it records, with
    that manifest: a cheap look (no download) at what a resume will start from, for messages. The resume
    itself also checks the sha256."""
    for name in list_checkpoints(storage):
        key = f"{CHECKPOINTS_KEY}/{name}"
        if not storage.exists(f"{key}/{MANIFEST_FILE}"):
            continue
        manifest = json.loads(storage.read_bytes(f"{key}/{MANIFEST_FILE}"))
        if storage.filesystem.get_file_info(storage.path(f"{key}/{STATE_FILE}")).size == manifest.get("bytes"):
            return name, manifest
    return None
