"""Object storage for one job: S3-compatible (AWS, MinIO, Ceph, moto) or a local folder.

One pyarrow filesystem serves everything: Ray Train writes checkpoints through it
(`RunConfig(storage_filesystem=...)`) and edgetune reads and writes the model artifact and exports
through it. Credentials come only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
or a mounted AWS profile), never from the config, and are never printed.

Layout under the storage uri (`s3://BUCKET/PREFIX`):

    <PREFIX>/<namespace>/<job>/checkpoints/   Ray Train run folder (checkpoint_<step> dirs + Ray's snapshot)
    <PREFIX>/<namespace>/<job>/model/         final model artifact (artifact.py)
    <PREFIX>/<namespace>/<job>/exports/<target>/   exported model + manifest.json
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

from edgetune_trainer.config import StorageSpec, check_object_key, parse_s3_uri

log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(RuntimeError):
    """Object storage could not be used; the message names the endpoint and bucket, never credentials."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay_s: float = 1.0
    max_delay_s: float = 20.0


def with_retries(action: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """Run `action`, retrying OSError with exponential backoff; raise StorageError after the last try."""
    delay = policy.first_delay_s
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except OSError as err:
            if attempt == policy.attempts:
                raise StorageError(f"{what} failed after {attempt} attempts: {err}") from err
            log.warning("%s failed (attempt %d/%d): %s; retrying in %.0f s", what, attempt, policy.attempts, err, delay)
            time.sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)
    raise AssertionError("unreachable")


def make_filesystem(spec: StorageSpec) -> pafs.S3FileSystem:
    """An S3 filesystem for the configured endpoint; credentials come from the environment."""
    options: dict[str, object] = {
        "region": spec.region,
        "connect_timeout": 5,
        "request_timeout": 30,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if spec.endpoint:
        scheme, _, host = spec.endpoint.partition("://")
        options.update(endpoint_override=host.rstrip("/"), scheme=scheme, force_virtual_addressing=False)
    return pafs.S3FileSystem(**options)


class JobStorage:
    """The storage area of one job, addressed by keys relative to `<uri>/<namespace>/<job>/`."""

    def __init__(self, spec: StorageSpec, namespace: str, job: str, retry: RetryPolicy | None = None) -> None:
        if spec.uri is None:
            raise StorageError("storage.uri is not set")
        self.spec = spec
        self.retry = retry or RetryPolicy()
        if spec.uri.startswith("s3://"):
            bucket, prefix = parse_s3_uri(spec.uri)
            self.bucket: str | None = bucket
            self.filesystem: pafs.FileSystem = make_filesystem(spec)
            base = "/".join(part for part in (bucket, prefix) if part)
            self.scheme = "s3://"
        else:
            self.bucket = None
            self.filesystem = pafs.LocalFileSystem()
            base = spec.uri[len("file://") :].rstrip("/")
            self.scheme = "file://"
        self.root = f"{base}/{check_object_key(namespace, 'namespace')}/{check_object_key(job, 'job name')}"

    # --- addressing ---------------------------------------------------------------------------

    def path(self, key: str = "") -> str:
        """The filesystem path of `key` under this job's root (keys cannot climb out of it)."""
        key = check_object_key(key.strip("/"), "storage key")
        return f"{self.root}/{key}" if key else self.root

    def uri(self, key: str = "") -> str:
        return f"{self.scheme}{self.path(key)}"

    @property
    def where(self) -> str:
        """Endpoint and bucket, for error messages."""
        endpoint = self.spec.endpoint or "AWS S3"
        return f"{endpoint} (bucket {self.bucket})" if self.bucket else f"local folder {self.root}"

    # --- operations ---------------------------------------------------------------------------

    def check_reachable(self) -> None:
        """Fail early, clearly, when the endpoint or bucket cannot be used."""

        def probe() -> None:
            if self.bucket is None:
                Path(self.root).mkdir(parents=True, exist_ok=True)
                return
            info = self.filesystem.get_file_info(self.bucket)
            if info.type == pafs.FileType.NotFound:
                raise StorageError(f"bucket {self.bucket!r} does not exist at {self.where}")

        try:
            with_retries(probe, f"reaching object storage at {self.where}", self.retry)
        except StorageError:
            raise
        except Exception as err:  # pyarrow raises a few non-OSError types for bad endpoints
            raise StorageError(f"cannot use object storage at {self.where}: {err}") from err

    def exists(self, key: str) -> bool:
        info = with_retries(lambda: self.filesystem.get_file_info(self.path(key)), f"stat {key}", self.retry)
        return info.type != pafs.FileType.NotFound

    def list_dirs(self, key: str) -> list[str]:
        """Names of the folders directly under `key` (empty when `key` does not exist)."""
        selector = pafs.FileSelector(self.path(key), allow_not_found=True, recursive=False)
        infos = with_retries(lambda: self.filesystem.get_file_info(selector), f"list {key}", self.retry)
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    def read_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            with self.filesystem.open_input_stream(self.path(key)) as stream:
                return stream.read()

        return with_retries(read, f"reading {self.uri(key)}", self.retry)

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)

        def write() -> None:
            if self.bucket is None:  # object stores have no folders; a local filesystem needs them made
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            with self.filesystem.open_output_stream(path) as stream:
                stream.write(data)

        with_retries(write, f"writing {self.uri(key)}", self.retry)

    def upload_dir(self, local: Path, key: str, last: tuple[str, ...] = ()) -> None:
        """Copy a local folder to `key`; files named in `last` are written after all others, so a reader
        that waits for them (a manifest) never sees a half-written folder."""
        files = sorted(p for p in local.rglob("*") if p.is_file())
        ordered = [p for p in files if p.name not in last] + [p for p in files if p.name in last]
        for file in ordered:
            self.write_bytes(f"{key}/{file.relative_to(local).as_posix()}", file.read_bytes())

    def download_dir(self, key: str, local: Path) -> Path:
        """Copy the folder at `key` into `local` (created); raise StorageError if it does not exist."""
        selector = pafs.FileSelector(self.path(key), allow_not_found=True, recursive=True)
        infos = with_retries(lambda: self.filesystem.get_file_info(selector), f"list {key}", self.retry)
        files = [info for info in infos if info.type == pafs.FileType.File]
        if not files:
            raise StorageError(f"nothing found at {self.uri(key)}")
        prefix = self.path(key) + "/"
        for info in files:
            target = local / info.path[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)

            def read(path: str = info.path) -> bytes:
                with self.filesystem.open_input_stream(path) as stream:
                    return stream.read()

            target.write_bytes(with_retries(read, f"reading {self.scheme}{info.path}", self.retry))
        return local

    def delete_dir(self, key: str) -> None:
        """Remove the folder at `key` and everything in it; a missing folder is fine."""
        if self.exists(key):
            path = self.path(key)
            with_retries(lambda: self.filesystem.delete_dir(path), f"deleting {self.uri(key)}", self.retry)
