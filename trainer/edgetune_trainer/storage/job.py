"""Object storage for one job: S3-compatible (AWS, MinIO, Ceph, moto) or a local folder.

Ray Train gets the job's pyarrow filesystem (`RunConfig(storage_filesystem=...)`) for its run folder;
checkpoints, the model artifact and exports are written by edgetune (`write_file`: parallel multipart
uploads) and read whole (`read_whole`: one GET per object). Credentials come only from the
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or a mounted AWS profile), never from the config,
and are never printed.

An outage is ridden out, not failed on: every operation, edgetune's and Ray Train's alike,
retries transient errors with exponential backoff within a time budget (RetryPolicy, 180 s by
default), then fails with one error naming the endpoint, the bucket and the budget.

Layout under the storage uri (`s3://BUCKET/PREFIX`):

    <PREFIX>/<namespace>/<job>/checkpoints/   Ray Train run folder (checkpoint_<step> dirs + Ray's snapshot)
    <PREFIX>/<namespace>/<job>/model/         final model artifact (model/artifact.py)
    <PREFIX>/<namespace>/<job>/exports/<target>/   exported model + manifest.json
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs

from edgetune_trainer.config import StorageSpec
from edgetune_trainer.rules import check_object_key, parse_s3_uri
from edgetune_trainer.storage.filesystem import RetryingHandler, make_filesystem, read_whole
from edgetune_trainer.storage.retry import RetryPolicy, StorageError, as_os_error, with_retries

T = TypeVar("T")

# Large files (checkpoints, model weights) go up as parallel multipart uploads: pyarrow's S3 output stream
# sends one part at a time (about 110 MB/s to the test server, boto3's transfer manager 240 MB/s), and
# pyarrow.fs.copy_files, Ray Train's default checkpoint upload, drops the error of a failed close.
UPLOAD_PART_BYTES = 16 << 20

UPLOAD_THREADS = 8


class JobStorage:
    """The storage area of one job, addressed by keys relative to `<uri>/<namespace>/<job>/`.

    `filesystem` retries every operation under `retry` (for S3; see RetryingHandler): hand it to
    whatever else writes there (Ray Train). This class's own operations retry the same way and raise
    StorageError naming the endpoint."""

    def __init__(self, spec: StorageSpec, namespace: str, job: str, retry: RetryPolicy | None = None) -> None:
        if spec.uri is None:
            raise StorageError("storage.uri is not set")
        self.spec = spec
        self.retry = retry or RetryPolicy()
        if spec.uri.startswith("s3://"):
            bucket, prefix = parse_s3_uri(spec.uri)
            self.bucket: str | None = bucket
            self.raw: pafs.FileSystem = make_filesystem(spec)
            base = "/".join(part for part in (bucket, prefix) if part)
            self.scheme = "s3://"
        else:
            self.bucket = None
            self.raw = pafs.LocalFileSystem()
            base = spec.uri[len("file://") :].rstrip("/")
            self.scheme = "file://"
        self.root = f"{base}/{check_object_key(namespace, 'namespace')}/{check_object_key(job, 'job name')}"
        self.filesystem: pafs.FileSystem = (
            pafs.PyFileSystem(RetryingHandler(self.raw, self.where, self.retry)) if self.bucket else self.raw
        )
        self._s3_client: Any = None

    # --- addressing ---------------------------------------------------------------------------

    def path(self, key: str = "") -> str:
        """The filesystem path of `key` under this job's root (keys cannot climb out of it)."""
        key = check_object_key(key.strip("/"), "storage key")
        return f"{self.root}/{key}" if key else self.root

    def uri(self, key: str = "") -> str:
        return f"{self.scheme}{self.path(key)}"

    def within(self, key: str) -> JobStorage:
        """This storage addressed from `key` down: a student's run keeps checkpoints/ and model/ there,
        exactly as the job keeps its own at the root."""
        scoped = copy.copy(self)
        scoped.root = self.path(key)
        return scoped

    @property
    def where(self) -> str:
        """Endpoint and bucket, for error messages."""
        endpoint = self.spec.endpoint or "AWS S3"
        return f"{endpoint} (bucket {self.bucket})" if self.bucket else f"local folder {self.root}"

    def _retry(self, action: Callable[[], T], what: str) -> T:
        return with_retries(action, f"{what} at {self.where}", self.retry)

    # --- operations ---------------------------------------------------------------------------

    def check_reachable(self) -> None:
        """Fail early, clearly, when the endpoint or bucket cannot be used."""

        def probe() -> None:
            if self.bucket is None:
                Path(self.root).mkdir(parents=True, exist_ok=True)
                return
            info = self.raw.get_file_info(self.bucket)
            if info.type == pafs.FileType.NotFound:
                raise StorageError(f"bucket {self.bucket!r} does not exist at {self.where}")

        try:
            with_retries(probe, f"reaching object storage at {self.where}", self.retry)
        except StorageError:
            raise
        except Exception as err:  # pyarrow raises a few non-OSError types for bad endpoints
            raise StorageError(f"cannot use object storage at {self.where}: {err}") from err

    def exists(self, key: str) -> bool:
        info = self._retry(lambda: self.raw.get_file_info(self.path(key)), f"stat {self.uri(key)}")
        return info.type != pafs.FileType.NotFound

    def list_dirs(self, key: str) -> list[str]:
        """Names of the folders directly under `key` (empty when `key` does not exist)."""
        selector = pafs.FileSelector(self.path(key), allow_not_found=True, recursive=False)
        infos = self._retry(lambda: self.raw.get_file_info(selector), f"listing {self.uri(key)}")
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    def read_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            return read_whole(self.raw, self.path(key))

        return self._retry(read, f"reading {self.uri(key)}")

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)

        def write() -> None:
            if self.bucket is None:  # object stores have no folders; a local filesystem needs them made
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            with self.raw.open_output_stream(path) as stream:
                stream.write(data)

        self._retry(write, f"writing {self.uri(key)}")

    def upload_dir(self, local: Path, key: str, last: tuple[str, ...] = ()) -> None:
        """Copy a local folder to `key`; files named in `last` are written after all others, so a reader
        that waits for them (a manifest) never sees a half-written folder."""
        files = sorted(p for p in local.rglob("*") if p.is_file())
        ordered = [p for p in files if p.name not in last] + [p for p in files if p.name in last]
        for file in ordered:
            self.write_file(file, f"{key}/{file.relative_to(local).as_posix()}")

    def write_file(self, local: Path, key: str) -> None:
        """Upload one local file to `key`: on S3 as a parallel multipart upload (boto3's transfer manager,
        credentials from the same environment), retried as a whole within the budget; any failure raises."""
        if self.bucket is None:
            self.write_bytes(key, local.read_bytes())
            return
        from boto3.s3.transfer import S3UploadFailedError, TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        object_key = self.path(key)[len(self.bucket) + 1 :]
        transfer = TransferConfig(
            multipart_threshold=UPLOAD_PART_BYTES, multipart_chunksize=UPLOAD_PART_BYTES, max_concurrency=UPLOAD_THREADS
        )

        def upload() -> None:
            try:
                self._client().upload_file(str(local), self.bucket, object_key, Config=transfer)
            except (BotoCoreError, ClientError, S3UploadFailedError) as err:
                raise as_os_error(err) from err

        self._retry(upload, f"writing {self.uri(key)}")

    def _client(self) -> Any:
        if self._s3_client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
                max_pool_connections=UPLOAD_THREADS * 2,
            )
            self._s3_client = boto3.client(
                "s3", endpoint_url=self.spec.endpoint, region_name=self.spec.region, config=config
            )
        return self._s3_client

    def download_dir(self, key: str, local: Path) -> Path:
        """Copy the folder at `key` into `local` (created); raise StorageError if it does not exist."""
        selector = pafs.FileSelector(self.path(key), allow_not_found=True, recursive=True)
        infos = self._retry(lambda: self.raw.get_file_info(selector), f"listing {self.uri(key)}")
        files = [info for info in infos if info.type == pafs.FileType.File]
        if not files:
            raise StorageError(f"nothing found at {self.uri(key)}")
        prefix = self.path(key) + "/"
        for info in files:
            target = local / info.path[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)

            def read(path: str = info.path) -> bytes:
                return read_whole(self.raw, path)

            target.write_bytes(self._retry(read, f"reading {self.scheme}{info.path}"))
        return local

    def delete_dir(self, key: str) -> None:
        """Remove the folder at `key` and everything in it; a missing folder is fine."""
        path = self.path(key)

        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):  # gone: removed by a try whose answer was lost
                self.raw.delete_dir(path)

        if self.exists(key):
            self._retry(delete, f"deleting {self.uri(key)}")
