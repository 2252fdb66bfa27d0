"""The parts of `edgetune run` that need no training: the embedded server's folder, the progress history
across runs, and the terminal display."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from edgetune_trainer.config import StorageSpec
from edgetune_trainer.local.display import LiveDisplay
from edgetune_trainer.local.history import RunHistory
from edgetune_trainer.storage.embedded_s3 import CREDENTIALS, EmbeddedS3
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.training.progress import ProgressEvent

pytestmark = [pytest.mark.trainer]


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def job_storage(server: EmbeddedS3) -> JobStorage:
    return JobStorage(StorageSpec(uri="s3://edgetune/", endpoint=server.endpoint), "local", "job")


def test_the_embedded_server_keeps_its_objects_in_the_folder(tmp_path: Path, credentials) -> None:
    server = EmbeddedS3(tmp_path).start()
    try:
        storage = job_storage(server)
        storage.write_bytes("checkpoints/a/state.pt", b"1" * 100)
        storage.write_bytes("model/weights", b"w")
        storage.filesystem.create_dir(storage.path("empty"))
        server.mirror()
        folder = tmp_path / "edgetune" / "local" / "job"
        assert (folder / "checkpoints" / "a" / "state.pt").read_bytes() == b"1" * 100
        assert (folder / "empty").is_dir()

        storage.delete_dir("checkpoints")  # keep-N deleting an old checkpoint
        storage.write_bytes("model/weights", b"changed")
    finally:
        server.stop()  # mirrors a last time
    assert not (folder / "checkpoints").exists()
    assert (folder / "model" / "weights").read_bytes() == b"changed"

    (folder / "model" / "weights.edgetune-partial").write_bytes(b"cut short")  # a kill during a write
    restarted = EmbeddedS3(tmp_path).start()
    try:
        storage = job_storage(restarted)
        assert storage.read_bytes("model/weights") == b"changed"
        assert storage.exists("empty")
        assert not storage.exists("model/weights.edgetune-partial")
    finally:
        restarted.stop()
    assert [path.name for path in (folder / "model").iterdir()] == ["weights"]


def test_a_key_outside_the_folder_is_not_written(tmp_path: Path) -> None:
    import boto3

    server = EmbeddedS3(tmp_path / "data").start()
    try:
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        client.put_object(Bucket="edgetune", Key="a/../../../escape", Body=b"x")
        client.put_object(Bucket="edgetune", Key="kept", Body=b"y")
    finally:
        server.stop()
    assert not (tmp_path / "escape").exists()
    assert (tmp_path / "data" / "edgetune" / "kept").read_bytes() == b"y"


def test_a_resumed_run_replaces_the_events_of_the_steps_it_repeats(tmp_path: Path) -> None:
    storage = JobStorage(StorageSpec(uri=f"file://{tmp_path}"), "local", "job")
    first = RunHistory()
    for step in (3, 6, 9):
        first.add(ProgressEvent("progress", step, 12, 0, loss=1.0))
    first.add(ProgressEvent("checkpoint", 6, 12, 0, checkpoint_uri="file:///c6"))
    first.save(storage)

    resumed = RunHistory.load(storage)  # resumed from step 6: steps 9 and 12 are trained again
    resumed.add(ProgressEvent("progress", 9, 12, 0, loss=0.5))
    resumed.add(ProgressEvent("progress", 12, 12, 0, loss=0.25, pids=(1, 2)))
    assert [(e.step, e.loss) for e in resumed.events("progress")] == [(3, 1.0), (6, 1.0), (9, 0.5), (12, 0.25)]
    assert resumed.final_loss() == 0.25
    assert resumed.latest_checkpoint().checkpoint_uri == "file:///c6"
    resumed.save(storage)
    assert RunHistory.load(storage).events("progress")[-1].pids == ()  # per-process details are not kept


def test_the_terminal_display_draws_a_bar_per_epoch() -> None:
    out = io.StringIO()
    display = LiveDisplay(lambda name: f"s3://b/checkpoints/{name}", Console(file=out, force_terminal=True, width=120))
    display.starting("starting a local Ray")  # a task that goes away: task ids then differ from positions
    resumed = "s3://b/checkpoints/checkpoint_000000020-x"
    display(
        ProgressEvent("progress", 22, 50, 0, steps_per_epoch=25, loss=0.7, samples_per_second=900, resumed_from=resumed)
    )
    display(ProgressEvent("eval", 25, 50, 1, steps_per_epoch=25, eval_accuracy=0.53))
    display(
        ProgressEvent(
            "checkpoint", 30, 50, 1, steps_per_epoch=25, checkpoint="checkpoint_000000030-x", checkpoint_bytes=10**6
        )
    )
    display(ProgressEvent("progress", 48, 50, 1, steps_per_epoch=25, loss=0.2, samples_per_second=1000))
    display(ProgressEvent("eval", 50, 50, 2, steps_per_epoch=25, eval_accuracy=0.94))
    display(ProgressEvent("final", 50, 50, 2, steps_per_epoch=25))
    display.close()
    text = out.getvalue()
    assert f"resumed from {resumed}" in text
    assert "checkpoint at step 30: s3://b/checkpoints/checkpoint_000000030-x (1.00 MB)" in text
    assert "epoch 1/2" in text and "epoch 2/2" in text and "eval acc 0.530" in text and "eval acc 0.940" in text
    assert "progress sink" not in text
