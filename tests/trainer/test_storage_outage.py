"""Object storage going away during a checkpoint: the real S3 server (moto, over HTTP) behind a fault proxy
(tests/faultproxy.py) that refuses connections or black-holes them, for 60 s or for good.

A checkpoint is saved as rank 0 saves it in training: `checkpoint.write_checkpoint` into a local folder,
then `checkpoint.upload_checkpoint` (the `checkpoint_upload_fn` that training/loop.py hands to Ray Train); the
last test is a whole training run on the local Ray cluster."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from faultproxy import FaultProxy
from jobconfigs import job_config
from test_checkpoint import state as checkpoint_state
from test_checkpoint import upload

from edgetune_trainer.config import StorageSpec, load_train_config
from edgetune_trainer.model.artifact import ARTIFACT_FILE, MODEL_KEY
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.storage.retry import RetryPolicy, StorageError
from edgetune_trainer.training import checkpoint as ckpt
from edgetune_trainer.training.progress import ProgressEvent
from edgetune_trainer.training.train import run_training

pytestmark = pytest.mark.trainer

OUTAGE_S = 60.0


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_server.port).start()
    yield proxy
    proxy.stop()


WEIGHTS = (64, 1024)  # 256 KB, so an upload is a few requests


def save(storage: JobStorage, step: int) -> str:
    return upload(storage, step, "outage", WEIGHTS)


def state(step: int) -> dict:
    return checkpoint_state(step, WEIGHTS)


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edgetune.storage" and "retrying" in r.getMessage()]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["refused", "blackhole"])
def test_a_checkpoint_save_rides_out_a_60_s_outage(
    fault: str, s3_server, bucket, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """refused: every connection refused (the server down); blackhole: connections accepted, nothing
    answered (a partition), so each request waits out pyarrow's own timeout first."""
    storage = JobStorage(StorageSpec(uri=f"s3://{bucket}/p", endpoint=proxy.endpoint), "ns", "job")
    save(storage, 10)

    proxy.cut() if fault == "refused" else proxy.blackhole()
    restore = threading.Timer(OUTAGE_S, proxy.restore)
    started = time.monotonic()
    restore.start()
    with caplog.at_level(logging.WARNING, logger="edgetune.storage"):
        saved = save(storage, 20)
    seconds = time.monotonic() - started
    restore.join()
    retries = retry_warnings(caplog)
    print(
        f"FIGURE: storage outage {OUTAGE_S:.0f} s ({fault}) -> checkpoint saved after {seconds:.1f} s, "
        f"{len(retries)} retries"
    )

    assert seconds >= OUTAGE_S - 1  # nothing can have been saved while storage was away
    assert seconds < OUTAGE_S + 35  # within a backoff step (15 s) of its return, or a request timeout (30 s)
    if fault == "refused":
        assert len(retries) >= 4, retries  # backoff 1, 2, 4, 8, 15 s... across the 60 s
        assert all(proxy.endpoint in line for line in retries)
    point = ckpt.find_resume_point(storage)
    assert point is not None and point.name == saved and point.manifest["step"] == 20
    assert torch.equal(point.state["model"]["w"], state(20)["model"]["w"])


def test_storage_gone_for_good_fails_naming_the_endpoint_and_keeps_the_last_checkpoint(
    s3_server, bucket, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Storage vanishes in the middle of a save (as the manifest goes up) and does not come back: the
    upload gives up after the retry budget with an error naming the endpoint and the budget, and that
    save raises it (so Ray Train never registers the checkpoint). The checkpoint before is still the
    newest intact one, and loads."""
    budget = 10.0
    storage = JobStorage(
        StorageSpec(uri=f"s3://{bucket}/p", endpoint=proxy.endpoint), "ns", "job", RetryPolicy(budget_s=budget)
    )
    save(storage, 10)
    previous = save(storage, 20)

    proxy.cut_on(ckpt.MANIFEST_FILE.encode())
    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        save(storage, 30)
    seconds = time.monotonic() - started
    message = str(failure.value)
    proxy.restore()
    with caplog.at_level(logging.WARNING, logger="edgetune_trainer.training.checkpoint"):
        point = ckpt.find_resume_point(storage)
    print(
        f"FIGURE: storage gone for good during the step-30 save -> that save failed after "
        f"{seconds:.1f} s (retry budget {budget:.0f} s); newest intact checkpoint: "
        f"step {point.manifest['step'] if point else None}"
    )
    print(f"FIGURE: error: {message[:300]}")

    assert proxy.endpoint in message and f"(bucket {bucket})" in message
    assert f"retry budget {budget:.0f} s" in message
    assert budget <= seconds < budget + 35  # the budget, plus at most one try in flight
    cut_short = ckpt.dir_name(30, "outage")
    assert cut_short in ckpt.list_checkpoints(storage)  # its folder was begun...
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert cut_short in warnings and "did not finish" in warnings  # ...and is skipped, by name
    assert point is not None and point.name == previous and point.manifest["step"] == 20
    assert torch.equal(point.state["model"]["w"], state(20)["model"]["w"])


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_training_rides_out_a_60_s_storage_outage(s3_server, proxy: FaultProxy, tiny_bert, reviews) -> None:
    """Storage goes away right after the first checkpoint (step 10) and comes back 60 s later: the step-20
    checkpoint upload waits it out in rank 0 (rank 1 waits in the next all-reduce), and the run finishes
    all its steps with no worker restart (max_failures=0) and writes its model."""
    s3_server.create_bucket("trainer-outage")
    config = load_train_config(job_config("outage", "trainer-outage", proxy, tiny_bert, reviews))
    seen: list[tuple[str, int, float]] = []
    outage: dict[str, float] = {}

    def restore() -> None:
        proxy.restore()
        outage["restored"] = time.monotonic()

    def cut_after_first_checkpoint(event: ProgressEvent) -> None:
        now = time.monotonic()
        seen.append((event.kind, event.step, now))
        if event.kind == "checkpoint" and "cut" not in outage:
            proxy.cut()
            outage["cut"] = now
            threading.Timer(OUTAGE_S, restore).start()

    started = time.monotonic()
    result = run_training(config, sinks=[cut_after_first_checkpoint], max_failures=0)
    wall = time.monotonic() - started

    checkpoint_times = {step: at for kind, step, at in seen if kind == "checkpoint"}
    assert sorted(checkpoint_times) == [10, 20, 30, 40, 50, 60]
    usual = statistics.median(checkpoint_times[s + 10] - checkpoint_times[s] for s in (20, 30, 40, 50))
    extra = checkpoint_times[20] - checkpoint_times[10] - usual
    after_return = checkpoint_times[20] - outage["restored"]
    print(
        f"FIGURE: storage outage {OUTAGE_S:.0f} s after the step-10 checkpoint -> run finished "
        f"{result.steps}/{result.total_steps} steps without a restart in {wall:.0f} s; the step-20 checkpoint "
        f"landed {after_return:.1f} s after storage returned; extra wall time {extra:.0f} s "
        f"(10 steps + checkpoint usually {usual:.1f} s)"
    )

    assert result.steps == result.total_steps == 60
    assert result.resumed_from is None  # ridden out by retries, not by a restart from a checkpoint
    progress = [step for kind, step, _ in seen if kind == "progress"]
    assert progress == sorted(set(progress))  # no step trained twice
    # The step-20 upload waited for storage (it landed after the return), then went through at the next
    # retry (at most one backoff step later) in about the time a checkpoint interval usually takes. Bounded
    # by the run's own pace, not by fixed seconds: steps 11-19 train during the outage, and on a loaded
    # machine they (and `usual`) take longer. Fixed bounds (20 s; 45 to 80 s of extra) failed in a CI run
    # that was slow throughout.
    assert 0 <= after_return < RetryPolicy().max_delay_s + usual + 5
    assert extra < OUTAGE_S + RetryPolicy().max_delay_s + usual
    storage = JobStorage(StorageSpec(uri=config.storage.uri, endpoint=s3_server.endpoint), "local", "outage")
    assert storage.exists(f"{MODEL_KEY}/{ARTIFACT_FILE}")
    newest = ckpt.find_resume_point(storage)
    assert newest is not None and newest.manifest["step"] == 60
