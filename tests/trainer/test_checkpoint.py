"""Checkpoints on a real S3 server: newest intact one wins; partial and corrupt ones are skipped by name."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
import torch

from edgetune_trainer.config import StorageSpec
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.training import checkpoint as ckpt

pytestmark = pytest.mark.trainer


def state(step: int, weights: tuple[int, ...] = (4,)) -> dict:
    """A trainer-shaped checkpoint state whose weights all equal `step`."""
    return {
        "model": {"w": torch.full(weights, float(step))},
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "step": step,
        "epoch": 0,
        "batch_in_epoch": step,
        "world_size": 1,
        "rng": [ckpt.capture_rng()],
    }


def upload(storage: JobStorage, step: int, token: str = "aaaaaa", weights: tuple[int, ...] = (4,)) -> str:
    """Save a checkpoint of `state(step, weights)` as rank 0 does in training; return its name."""
    name = ckpt.dir_name(step, token)
    with tempfile.TemporaryDirectory() as folder:
        ckpt.write_checkpoint(Path(folder), state(step, weights))
        ckpt.upload_checkpoint(storage, Path(folder), name)
    return name


@pytest.fixture
def storage(s3_server, bucket) -> JobStorage:
    return JobStorage(StorageSpec(uri=f"s3://{bucket}/p", endpoint=s3_server.endpoint), "ns", "job")


def test_newest_intact_checkpoint_is_chosen(storage: JobStorage) -> None:
    for step in (10, 20, 30):
        upload(storage, step)
    point = ckpt.find_resume_point(storage)
    assert point is not None and point.manifest["step"] == 30
    assert torch.equal(point.state["model"]["w"], torch.full((4,), 30.0))
    assert point.uri.startswith("s3://") and point.uri.endswith(ckpt.dir_name(30, "aaaaaa"))


def test_corrupt_and_partial_checkpoints_are_skipped_with_a_warning(storage: JobStorage, caplog) -> None:
    upload(storage, 10)
    corrupt = upload(storage, 20)
    partial = upload(storage, 30)
    data = bytearray(storage.read_bytes(f"{ckpt.CHECKPOINTS_KEY}/{corrupt}/{ckpt.STATE_FILE}"))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(f"{ckpt.CHECKPOINTS_KEY}/{corrupt}/{ckpt.STATE_FILE}", bytes(data))
    storage.filesystem.delete_file(storage.path(f"{ckpt.CHECKPOINTS_KEY}/{partial}/{ckpt.MANIFEST_FILE}"))
    with caplog.at_level(logging.WARNING, logger="edgetune_trainer.training.checkpoint"):
        point = ckpt.find_resume_point(storage)
    assert point is not None and point.manifest["step"] == 10
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert partial in warnings and "did not finish" in warnings
    assert corrupt in warnings and "sha256" in warnings


def test_a_checkpoint_whose_state_never_landed_is_skipped(storage: JobStorage, caplog) -> None:
    """The manifest is there but state.pt is not (a checkpoint written by an older edgetune, whose upload
    was Ray Train's own and could lose a file unreported, or a file deleted by hand): skipped by name,
    the previous one is used."""
    upload(storage, 10)
    orphan = upload(storage, 20)
    storage.filesystem.delete_file(storage.path(f"{ckpt.CHECKPOINTS_KEY}/{orphan}/{ckpt.STATE_FILE}"))
    with caplog.at_level(logging.WARNING, logger="edgetune_trainer.training.checkpoint"):
        point = ckpt.find_resume_point(storage)
    print(f"FIGURE: manifest without state.pt -> resumed from step {point.manifest['step'] if point else None}")
    assert point is not None and point.manifest["step"] == 10
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert orphan in warnings and "no state.pt" in warnings


def test_no_checkpoint_means_a_fresh_start(storage: JobStorage) -> None:
    assert ckpt.find_resume_point(storage) is None


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    saved = ckpt.capture_rng()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.write_checkpoint(tmp_path, {**state(1), "rng": [saved]})
    restored = torch.load(tmp_path / ckpt.STATE_FILE, weights_only=True)
    ckpt.restore_rng(restored["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
