"""Ray Train DDP end to end: a real local Ray cluster (2 CPU workers, gloo), a real S3 server over HTTP,
tiny real models loaded through the real loading code."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from jobconfigs import job_config

from edgetune_trainer.config import load_train_config
from edgetune_trainer.data import load_eval_examples
from edgetune_trainer.model.loading import load_artifact
from edgetune_trainer.model.preprocess import encode_texts
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.training.checkpoint import CHECKPOINTS_KEY, list_checkpoints
from edgetune_trainer.training.progress import ProgressEvent
from edgetune_trainer.training.train import TrainResult, run_training

pytestmark = [pytest.mark.trainer, pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def progress_losses(result: TrainResult) -> list[float]:
    return [e.loss for e in result.events if e.kind == "progress" and e.loss is not None]


@pytest.fixture(scope="module")
def uninterrupted(s3_server, tiny_bert, reviews, tmp_path_factory) -> tuple[TrainResult, JobStorage, dict]:
    """One full run shared by the assertions below (training is the slow part)."""
    s3_server.create_bucket("trainer-base")
    config = load_train_config(job_config("baseline", "trainer-base", s3_server, tiny_bert, reviews))
    scraped: list[str] = []

    def scrape_metrics(event: ProgressEvent) -> None:
        if event.kind == "progress" and not scraped:
            port = os.environ["EDGETUNE_METRICS_PORT"]
            scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())

    result = run_training(config, sinks=[scrape_metrics])
    storage = JobStorage(config.storage, config.namespace, config.name)
    return result, storage, {"config": config, "metrics": scraped}


def test_ddp_training_learns(uninterrupted) -> None:
    result, _, _ = uninterrupted
    assert result.steps == result.total_steps == 60  # 640 train rows / 2 ranks / 16 per batch = 20 steps x 3 epochs
    losses = progress_losses(result)
    assert sum(losses[:3]) / 3 > sum(losses[-3:]) / 3 + 0.2, losses
    assert result.eval_accuracy is not None and result.eval_accuracy >= 0.85
    assert result.resumed_from is None


def test_both_workers_took_part_with_synchronised_gradients(uninterrupted) -> None:
    result, _, _ = uninterrupted
    final = [e for e in result.events if e.kind == "final"][-1]
    assert final.world_size == 2
    assert len(set(final.pids)) == 2
    first, second = final.param_checksums
    assert first == second  # each rank trained on its own shard; DDP all-reduce kept the weights identical


def test_checkpoints_land_in_s3_with_keep_n(uninterrupted) -> None:
    _, storage, _ = uninterrupted
    names = list_checkpoints(storage)
    assert [int(n.split("_")[1].split("-")[0]) for n in names] == [60, 50]  # everySteps 10, keep 2
    for name in names:
        assert storage.exists(f"{CHECKPOINTS_KEY}/{name}/state.pt")
        assert storage.exists(f"{CHECKPOINTS_KEY}/{name}/manifest.json")


def test_final_artifact_is_self_sufficient(uninterrupted) -> None:
    _, storage, extra = uninterrupted
    with tempfile.TemporaryDirectory() as folder:
        loaded, header = load_artifact(storage.download_dir("model", Path(folder)))
        assert header["labels"] == ["neg", "pos"] and header["preprocessing"] == {"kind": "text", "maxLength": 32}
        examples = load_eval_examples(extra["config"], limit=200)
        batch = encode_texts(loaded.tokenizer, [text for text, _ in examples], 32)
        with torch.no_grad():
            predicted = loaded.model(**batch).logits.argmax(-1)
        accuracy = float((predicted == torch.tensor([label for _, label in examples])).float().mean())
        assert accuracy >= 0.85


def test_rank_zero_serves_prometheus_metrics(uninterrupted) -> None:
    _, _, extra = uninterrupted
    text = extra["metrics"][0]
    for name in ("edgetune_train_loss", "edgetune_train_samples_per_second", "edgetune_train_step"):
        assert f'{name}{{job="baseline",namespace="local"}}' in text


def test_killed_worker_resumes_from_the_latest_checkpoint(uninterrupted, s3_server, tiny_bert, reviews) -> None:
    """SIGKILL rank 1 a few steps after the step-20 checkpoint: Ray Train restarts the worker group, the
    run resumes from step 20, redoes the steps since (at most a checkpoint interval), and ends with the
    very weights of an uninterrupted run (same optimizer steps, same data order, same RNG)."""
    baseline, _, _ = uninterrupted
    s3_server.create_bucket("trainer-kill")
    config = load_train_config(job_config("killed", "trainer-kill", s3_server, tiny_bert, reviews))
    killed: list[tuple[int, float]] = []  # (step, time.monotonic()) of the kill
    arrivals: list[float] = []  # time.monotonic() of each event, in the order of result.events

    def kill_rank_one(event: ProgressEvent) -> None:
        arrivals.append(time.monotonic())
        if not killed and event.kind == "progress" and event.step >= 23:
            killed.append((event.step, time.monotonic()))
            os.kill(event.pids[1], signal.SIGKILL)

    result = run_training(config, sinks=[kill_rank_one], max_failures=2)
    assert killed, "the worker was never killed"
    killed_step, killed_at = killed[0]
    assert result.steps == baseline.steps == 60
    assert result.resumed_from is not None and "checkpoint_000000020-" in result.resumed_from
    resumed_step = int(result.resumed_from.rsplit("checkpoint_", 1)[1].split("-")[0])
    progress = [(e.step, at) for e, at in zip(result.events, arrivals, strict=True) if e.kind == "progress"]
    progress_steps = [step for step, _ in progress]  # one report every 60 // 20 = 3 steps
    restart = progress_steps.index(21, progress_steps.index(killed_step))  # the first report after resuming
    redone = killed_step - resumed_step
    interval = config.checkpoint.every_steps
    to_resume = progress[restart][1] - killed_at
    print(
        f"FIGURE: worker SIGKILL at step {killed_step} -> resumed from step {resumed_step}, steps redone "
        f"{redone} (checkpoint interval {interval}), time to resume {to_resume:.1f} s"
    )
    assert interval is not None and redone <= interval  # steps redone <= checkpoint interval
    assert 0 < to_resume < 120
    assert progress_steps[restart:] == list(range(21, 61, 3))
    final = [e for e in result.events if e.kind == "final"][-1]
    baseline_final = [e for e in baseline.events if e.kind == "final"][-1]
    assert final.param_checksums[0] == pytest.approx(baseline_final.param_checksums[0], rel=1e-9)
