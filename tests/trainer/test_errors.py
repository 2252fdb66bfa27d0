"""Bad input fails fast, before any Ray worker starts, with a message that names the problem."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jobconfigs import job_config

from edgetune_trainer.config import StorageSpec, load_train_config
from edgetune_trainer.data import DataError
from edgetune_trainer.model.loading import ModelLoadError
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.storage.retry import RetryPolicy, StorageError
from edgetune_trainer.training.train import run_training

pytestmark = pytest.mark.trainer


def test_missing_dataset_field_names_the_field_and_the_columns(s3_server, bucket, tiny_bert, tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"review": "good film", "label": i % 2}) + "\n" for i in range(20)))
    config = load_train_config(job_config("e1", bucket, s3_server, tiny_bert, data))
    with pytest.raises(DataError, match=r"field 'text' not found; the data has \['review', 'label'\]"):
        run_training(config)


def test_unknown_label_is_named(s3_server, bucket, tiny_bert, tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "good film", "label": "meh"}) + "\n" for _ in range(20)))
    config = load_train_config(job_config("e2", bucket, s3_server, tiny_bert, data))
    with pytest.raises(DataError, match=r"label 'meh' is not a class id 0..1 nor one of \['neg', 'pos'\]"):
        run_training(config)


def test_unknown_torchvision_model(s3_server, bucket, tiny_bert, reviews) -> None:
    raw = job_config("e3", bucket, s3_server, tiny_bert, reviews)
    raw["model"] = {"source": "torchvision://resnet19", "task": "image-classification", "numLabels": 2}
    with pytest.raises(ModelLoadError, match="unknown torchvision classification model 'resnet19'"):
        run_training(load_train_config(raw))


def test_missing_local_model_folder(s3_server, bucket, reviews, tmp_path) -> None:
    config = load_train_config(job_config("e4", bucket, s3_server, tmp_path / "nope", reviews))
    with pytest.raises(ModelLoadError, match="does not exist"):
        run_training(config)


def test_unreachable_storage_fails_with_the_endpoint(tiny_bert, reviews) -> None:
    raw = job_config("e5", "some-bucket", _Dead(), tiny_bert, reviews)
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"http://127\.0\.0\.1:9 \(bucket some-bucket\) failed after 3 attempts"):
        run_training(load_train_config(raw), retry=RetryPolicy(attempts=3, first_delay_s=0.1))
    assert time.monotonic() - started < 60


def test_unreachable_storage_gives_up_after_the_retry_budget() -> None:
    """Nothing listens at the endpoint: tries go on, backing off, until the time budget is spent; then
    one error names the endpoint, the tries and the budget."""
    storage = JobStorage(
        StorageSpec(uri="s3://some-bucket/p", endpoint=_Dead.endpoint), "ns", "job", RetryPolicy(budget_s=4)
    )
    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        storage.check_reachable()
    seconds = time.monotonic() - started
    print(f"FIGURE: unreachable endpoint, retry budget 4 s -> gave up after {seconds:.1f} s: {failure.value}"[:300])
    assert "reaching object storage at http://127.0.0.1:9 (bucket some-bucket) failed after" in str(failure.value)
    assert "(retry budget 4 s)" in str(failure.value)
    assert 4 <= seconds < 4 + 8  # the budget, plus at most one try (pyarrow's own 3 connection attempts)


def test_a_definite_answer_is_not_retried(s3_server, bucket) -> None:
    """A missing key is an answer, not an outage: it fails at once, even with the default 180 s budget."""
    storage = JobStorage(StorageSpec(uri=f"s3://{bucket}/p", endpoint=s3_server.endpoint), "ns", "job")
    started = time.monotonic()
    with pytest.raises(StorageError, match="Path does not exist") as failure:
        storage.read_bytes("no/such/key")
    seconds = time.monotonic() - started
    print(f"FIGURE: missing key -> StorageError after {seconds:.2f} s, no retry")
    assert s3_server.endpoint in str(failure.value)
    assert seconds < 1.0  # the first retry would wait 1 s


def test_an_upload_refused_by_the_storage_fails_at_once(s3_server, bucket, tmp_path) -> None:
    """The checkpoint upload path (boto3 multipart): no such bucket and bad credentials are answers, so
    they fail at once naming the endpoint; a refused connection would be retried (see the outage tests)."""
    local = tmp_path / "state.pt"
    local.write_bytes(b"x" * 1024)
    storage = JobStorage(StorageSpec(uri="s3://no-such-bucket/p", endpoint=s3_server.endpoint), "ns", "job")
    started = time.monotonic()
    with pytest.raises(StorageError, match="NoSuchBucket") as failure:
        storage.write_file(local, "checkpoints/c/state.pt")
    assert s3_server.endpoint in str(failure.value) and time.monotonic() - started < 1.0
    storage = JobStorage(StorageSpec(uri=f"s3://{bucket}/p", endpoint=s3_server.endpoint), "ns", "job")
    storage.write_file(local, "checkpoints/c/state.pt")
    assert storage.read_bytes("checkpoints/c/state.pt") == local.read_bytes()


def test_missing_bucket_is_named(s3_server, tiny_bert, reviews) -> None:
    config = load_train_config(job_config("e6", "no-such-bucket", s3_server, tiny_bert, reviews))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        run_training(config, retry=RetryPolicy(attempts=1))


class _Dead:
    """An endpoint nothing listens on (port 9, discard)."""

    endpoint = "http://127.0.0.1:9"


def test_plan_is_exact() -> None:
    from edgetune_trainer.training.plan import make_plan

    config = load_train_config(job_config("p", "b-b-b", _Dead(), Path("m"), Path("d")))
    plan = make_plan(config, shard_size=320)
    assert (plan.micro_per_epoch, plan.steps_per_epoch, plan.total_steps) == (20, 20, 60)
    accumulated = config.model_copy(
        update={"training": config.training.model_copy(update={"gradient_accumulation": 3, "max_steps": 15})}
    )
    plan = make_plan(accumulated, shard_size=320)
    assert (plan.micro_per_epoch, plan.steps_per_epoch, plan.total_steps) == (20, 7, 15)
