"""Bad input fails fast, before any Ray worker starts, with a message that names the problem."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jobconfigs import job_config

from edgetune_trainer.config import load_train_config
from edgetune_trainer.data import DataError
from edgetune_trainer.models import ModelLoadError
from edgetune_trainer.storage import RetryPolicy, StorageError
from edgetune_trainer.train import run_training

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


def test_missing_bucket_is_named(s3_server, tiny_bert, reviews) -> None:
    config = load_train_config(job_config("e6", "no-such-bucket", s3_server, tiny_bert, reviews))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        run_training(config, retry=RetryPolicy(attempts=1))


class _Dead:
    """An endpoint nothing listens on (port 9, discard)."""

    endpoint = "http://127.0.0.1:9"


def test_plan_is_exact() -> None:
    from edgetune_trainer.loop import make_plan

    config = load_train_config(job_config("p", "b-b-b", _Dead(), Path("m"), Path("d")))
    plan = make_plan(config, shard_size=320)
    assert (plan.micro_per_epoch, plan.steps_per_epoch, plan.total_steps) == (20, 20, 60)
    accumulated = config.model_copy(
        update={"training": config.training.model_copy(update={"gradient_accumulation": 3, "max_steps": 15})}
    )
    plan = make_plan(accumulated, shard_size=320)
    assert (plan.micro_per_epoch, plan.steps_per_epoch, plan.total_steps) == (20, 7, 15)
