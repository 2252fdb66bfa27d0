"""MinIO from hack/e2e-kind.sh, through a port-forward: upload the quickstart, list checkpoints, print a manifest.

    e2e-s3.py upload BUCKET PREFIX DIR       every file under DIR to s3://BUCKET/PREFIX/...
    e2e-s3.py checkpoints BUCKET PREFIX      the checkpoints under PREFIX, each with its files (fails on none)
    e2e-s3.py manifest S3_URI                the manifest.json of an export folder
    e2e-s3.py forget BUCKET PREFIX...        delete every object under each PREFIX (a job's earlier run)

Credentials come from MINIO_SECRET_JSON (the chart's Secret as `kubectl get -o json` prints it), the endpoint
from MINIO_ENDPOINT.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError


def client():  # noqa: ANN201 (boto3 clients have no importable type)
    data = json.loads(os.environ["MINIO_SECRET_JSON"])["data"]
    key_id, secret = (base64.b64decode(data[k]).decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["MINIO_ENDPOINT"],
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )
    deadline = time.monotonic() + 60  # the port-forward takes a moment to listen
    while True:
        try:
            s3.list_buckets()
            return s3
        except (EndpointConnectionError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def upload(bucket: str, prefix: str, folder: str) -> None:
    s3 = client()
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(root).as_posix()}"
        s3.upload_file(str(path), bucket, key)
        print(f"  s3://{bucket}/{key} ({path.stat().st_size} bytes)")


def objects(s3, bucket: str, prefix: str) -> Iterator[dict]:  # noqa: ANN001 (a boto3 client)
    """Every object under the folder PREFIX, as list_objects_v2 describes it (Key, Size, ...)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        yield from page.get("Contents", [])


def checkpoints(bucket: str, prefix: str) -> None:
    found: dict[str, list[str]] = {}
    for item in objects(client(), bucket, prefix):
        name, _, rest = item["Key"][len(prefix) + 1 :].partition("/")
        found.setdefault(name, []).append(f"{rest} ({item['Size']} B)")
    if not found:
        sys.exit(f"no checkpoint under s3://{bucket}/{prefix}/")
    for name, files in sorted(found.items()):
        print(f"  s3://{bucket}/{prefix}/{name}: {', '.join(sorted(files))}")


def forget(bucket: str, *prefixes: str) -> None:
    s3 = client()
    for prefix in prefixes:
        keys = [{"Key": item["Key"]} for item in objects(s3, bucket, prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True})
        if keys:
            print(f"  forgot s3://{bucket}/{prefix}/ ({len(keys)} objects from an earlier run)")


def manifest(uri: str) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = client().get_object(Bucket=bucket, Key=f"{key.rstrip('/')}/manifest.json")["Body"].read()
    print(json.dumps(json.loads(body), indent=2, sort_keys=True))


if __name__ == "__main__":
    action, args = sys.argv[1], sys.argv[2:]
    {"upload": upload, "checkpoints": checkpoints, "manifest": manifest, "forget": forget}[action](*args)
