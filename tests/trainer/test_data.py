"""Data and model sources through the real code: JSONL/CSV/Parquet and image folders on the S3 server,
a model folder fetched from s3://, the seeded split and equal shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from jobconfigs import job_config

from edgetune_trainer.config import load_train_config
from edgetune_trainer.data import Examples, ImageRef, read_examples, shard, split_examples
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.synthetic import write_image_folder
from edgetune_trainer.training.loop import load_job_model

pytestmark = pytest.mark.trainer

ROWS = [{"text": f"review {i} good" if i % 2 else f"review {i} bad", "label": ["neg", "pos"][i % 2]} for i in range(30)]


def put(s3_server, bucket: str, key: str, data: bytes) -> str:
    import boto3

    boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1").put_object(
        Bucket=bucket, Key=key, Body=data
    )
    return f"s3://{bucket}/{key}"


def table_bytes(kind: str) -> bytes:
    table = pa.Table.from_pylist(ROWS)
    buffer = io.BytesIO()
    if kind == "jsonl":
        buffer.write("".join(json.dumps(row) + "\n" for row in ROWS).encode())
    elif kind == "csv":
        pcsv.write_csv(table, buffer)
    else:
        pq.write_table(table, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_text_tables_on_s3(s3_server, bucket, tiny_bert, kind: str) -> None:
    source = put(s3_server, bucket, f"data/train.{kind}", table_bytes(kind))
    config = load_train_config(job_config("d", bucket, s3_server, tiny_bert, Path("unused")))
    config = config.model_copy(update={"dataset": config.dataset.model_copy(update={"source": source})})
    examples = read_examples(source, config, None)
    assert examples.inputs[:2] == ["review 0 bad", "review 1 good"]
    assert examples.labels[:4] == [0, 1, 0, 1]  # class names mapped through model.labels


def test_image_folder_on_s3_is_listed_then_fetched_lazily(s3_server, bucket, tiny_bert, tmp_path) -> None:
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=6, size=16)
    for path in folder.rglob("*.png"):
        put(s3_server, bucket, f"images/{path.relative_to(folder).as_posix()}", path.read_bytes())
    raw = job_config("i", bucket, s3_server, tiny_bert, Path("unused"))
    raw["model"] = {"source": "torchvision://resnet18@none", "task": "image-classification", "numLabels": 2}
    raw["dataset"] = {"source": f"s3://{bucket}/images/", "validationFraction": 0.25, "imageSize": 16}
    split = split_examples(load_train_config(raw), None)
    assert len(split.train) + len(split.eval) == 12 and len(split.eval) == 3
    assert all(isinstance(item, ImageRef) for item in split.train.inputs)  # nothing downloaded yet
    assert split.train.inputs[0].load().size == (16, 16)


def test_split_is_seeded_and_shards_are_equal(s3_server, bucket, tiny_bert, reviews) -> None:
    config = load_train_config(job_config("s", bucket, s3_server, tiny_bert, reviews))
    first, second = split_examples(config, None), split_examples(config, None)
    assert first.eval.inputs == second.eval.inputs and len(first.eval) == 160
    shards = [shard(first.train, rank, 3, equal=True) for rank in range(3)]
    assert [len(s) for s in shards] == [213, 213, 213]  # 640 - 640 % 3, cut so every rank runs the same steps
    numbered = Examples(list(range(10)), [0] * 10)
    assert [shard(numbered, rank, 3, equal=True).inputs for rank in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert shard(numbered, 0, 3, equal=False).inputs == [0, 3, 6, 9]  # eval keeps every example


def test_model_folder_from_s3(s3_server, bucket, tiny_bert, reviews) -> None:
    raw = job_config("m", bucket, s3_server, tiny_bert, reviews)
    storage = JobStorage(load_train_config(raw).storage, "local", "m")
    storage.upload_dir(tiny_bert, "source-model")
    raw["model"]["source"] = storage.uri("source-model")
    loaded = load_job_model(load_train_config(raw), None)
    assert loaded.family == "hf" and loaded.model.config.num_labels == 2
    assert loaded.tokenizer("good film")["input_ids"][1] != loaded.tokenizer.unk_token_id
