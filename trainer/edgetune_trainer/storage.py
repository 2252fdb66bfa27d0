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
    <PREFIX>/<namespace>/<job>/model/         final model artifact (artifact.py)
    <PREFIX>/<namespace>/<job>/exports/<target>/   exported model + manifest.json
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from edgetune_trainer.config import StorageSpec, check_object_key, parse_s3_uri

log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(RuntimeError):
    """Object storage could not be used; the message names the endpoint and bucket, never credentials."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff (`first_delay_s`, doubling up to `max_delay_s`) until `budget_s` seconds have
    passed since the first try; `attempts`, when set, also caps the number of tries. The budget is checked
    between tries: one try can take longer on its own (pyarrow's request timeout is 30 s, 3 tries)."""

    attempts: int | None = None
    first_delay_s: float = 1.0
    max_delay_s: float = 15.0
    budget_s: float = 180.0


# The storage answered, and answering again will not change it: no retry.
_FINAL_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_FINAL_AWS_ERRORS = re.compile(
    r"AWS Error (ACCESS_DENIED|NO_SUCH_BUCKET|NO_SUCH_KEY|NO_SUCH_UPLOAD|INVALID_ACCESS_KEY_ID|"
    r"SIGNATURE_DOES_NOT_MATCH|INVALID_PARAMETER_VALUE|MISSING_PARAMETER|RESOURCE_NOT_FOUND)"
    r"|HTTP status 4(?!08|29)\d\d"  # 4xx but request timeout (408) and too many requests (429)
)


def is_transient(error: BaseException) -> bool:
    """Whether `error` may go away by itself: refused, reset or timed-out connections, 5xx, throttling.
    Not found, access denied and other definite answers of the storage are final."""
    if not isinstance(error, OSError) or isinstance(error, _FINAL_ERRORS):
        return False
    return _FINAL_AWS_ERRORS.search(str(error)) is None


def with_retries(action: Callable[[], T], what: str, policy: RetryPolicy, *, wrap_final: bool = True) -> T:
    """Run `action`, retrying transient OSErrors with exponential backoff within the policy's budget; then
    raise StorageError naming `what` (which names the endpoint), the tries and the budget. A final error
    (not found, access denied) is raised at once: as StorageError, or unchanged when not `wrap_final`."""
    started = time.monotonic()
    delay = policy.first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except OSError as err:
            if not is_transient(err):
                if wrap_final:
                    raise StorageError(f"{what}: {err}") from err
                raise
            elapsed = time.monotonic() - started
            remaining = policy.budget_s - elapsed
            out_of_attempts = policy.attempts is not None and attempt >= policy.attempts
            if out_of_attempts or remaining <= 0:
                budget = f"{policy.attempts} attempts" if out_of_attempts else f"{policy.budget_s:.0f} s"
                # Not chained: the one-line root cause users see (train._root_cause) must be this message.
                raise StorageError(
                    f"{what} failed after {attempt} attempts in {elapsed:.0f} s (retry budget {budget}): {err}"
                ) from None
            pause = min(delay, remaining)
            log.warning(
                "%s failed (attempt %d, %.0f s of a %.0f s budget): %s; retrying in %.1f s",
                what,
                attempt,
                elapsed,
                policy.budget_s,
                err,
                pause,
            )
            time.sleep(pause)
            delay = min(delay * 2, policy.max_delay_s)


def read_whole(filesystem: pafs.FileSystem, path: str) -> bytes:
    """A whole object in one request. pyarrow's S3 input *stream* reads 256 KiB ranges one after another
    (391 GETs for a 100 MB checkpoint, 6 MB/s against the test server); a random-access file reads its
    known size in one GET (about 700 MB/s there, bench/bench_checkpoint.py)."""
    with filesystem.open_input_file(path) as file:
        return file.read()


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


class _SpooledUpload(io.RawIOBase):
    """The writable end of `RetryingHandler.open_output_stream`: bytes are spooled (in memory, then a
    temporary file) and handed to `send` on close, which can read them again for every try."""

    def __init__(self, send: Callable[[_SpooledUpload], None]) -> None:
        super().__init__()
        self._send = send
        self._spool = tempfile.SpooledTemporaryFile(max_size=64 << 20, prefix="edgetune-upload-")  # noqa: SIM115 (closed in close)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._spool.write(bytes(data))

    def rewind(self) -> None:
        self._spool.seek(0)

    def chunks(self) -> Iterator[bytes]:
        while chunk := self._spool.read(8 << 20):
            yield chunk

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._send(self)
        finally:
            self._spool.close()
            super().close()


class RetryingHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem (`pafs.PyFileSystem(RetryingHandler(...))`) that runs every operation of
    `inner` under a retry policy. It is `JobStorage.filesystem`, so what Ray Train writes itself (its run
    snapshot, keep-N deletions) rides out an outage of the object store, not only edgetune's own reads
    and writes. Uploads are spooled and sent on close, downloads read whole, so a failed try is
    repeated whole. A delete whose try failed after it took effect is not an error on the next try."""

    def __init__(self, inner: pafs.FileSystem, where: str, policy: RetryPolicy) -> None:
        self.inner = inner
        self.where = where
        self.policy = policy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetryingHandler):
            return NotImplemented
        return self.inner.equals(other.inner) and (self.where, self.policy) == (other.where, other.policy)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash((self.where, self.policy))

    def _retry(self, action: Callable[[], T], what: str) -> T:
        return with_retries(action, f"{what} at {self.where}", self.policy, wrap_final=False)

    def _delete(self, action: Callable[[], None], what: str) -> None:
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            try:
                action()
            except FileNotFoundError:
                if tries == 1:
                    raise  # missing from the start: the caller's error

        self._retry(once, what)

    def get_type_name(self) -> str:
        return f"edgetune-retrying+{self.inner.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._retry(lambda: self.inner.get_file_info(paths), f"stat {', '.join(paths)}")

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._retry(lambda: self.inner.get_file_info(selector), f"list {selector.base_dir}")

    def create_dir(self, path: str, recursive: bool) -> None:
        self._retry(lambda: self.inner.create_dir(path, recursive=recursive), f"creating {path}")

    def delete_dir(self, path: str) -> None:
        self._delete(lambda: self.inner.delete_dir(path), f"deleting {path}")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._delete(lambda: self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok), f"emptying {path}")

    def delete_root_dir_contents(self) -> None:
        self._retry(lambda: self.inner.delete_dir_contents("/", accept_root_dir=True), "emptying /")

    def delete_file(self, path: str) -> None:
        self._delete(lambda: self.inner.delete_file(path), f"deleting {path}")

    def move(self, src: str, dest: str) -> None:
        self._retry(lambda: self.inner.move(src, dest), f"moving {src} to {dest}")

    def copy_file(self, src: str, dest: str) -> None:
        self._retry(lambda: self.inner.copy_file(src, dest), f"copying {src} to {dest}")

    def _read_whole(self, path: str) -> pa.BufferReader:
        return pa.BufferReader(self._retry(lambda: read_whole(self.inner, path), f"reading {path}"))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._read_whole(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._read_whole(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        def send(spool: _SpooledUpload) -> None:
            def write() -> None:
                spool.rewind()
                with self.inner.open_output_stream(path, compression=None, metadata=metadata) as stream:
                    for chunk in spool.chunks():
                        stream.write(chunk)

            try:
                self._retry(write, f"writing {path}")
            except StorageError as err:
                # Said here too: pyarrow.fs.copy_files waits for close() but discards its error, so a
                # caller that copies through it (Ray Train's own writes) may never hear of it.
                log.error("%s; the file is not in storage", err)
                raise

        return pa.PythonFile(_SpooledUpload(send), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self._retry(
            lambda: self.inner.open_append_stream(path, compression=None, metadata=metadata), f"appending to {path}"
        )


# Large files (checkpoints, model weights) go up as parallel multipart uploads: pyarrow's S3 output stream
# sends one part at a time (about 110 MB/s to the test server, boto3's transfer manager 240 MB/s), and
# pyarrow.fs.copy_files, Ray Train's default checkpoint upload, drops the error of a failed close.
UPLOAD_PART_BYTES = 16 << 20
UPLOAD_THREADS = 8
_S3_ERROR_CODE = re.compile(r"\((\w+)\)")
_S3_FINAL_CODES = {
    "AccessDenied": PermissionError,
    "InvalidAccessKeyId": PermissionError,
    "SignatureDoesNotMatch": PermissionError,
    "NoSuchBucket": FileNotFoundError,
    "NoSuchKey": FileNotFoundError,
}


def as_os_error(error: Exception) -> OSError:
    """A boto3/botocore error as the OSError `with_retries` understands: a definite answer of the storage
    (access denied, no such bucket, another 4xx) becomes a final error, anything else a transient one."""
    status = getattr(error, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    match = _S3_ERROR_CODE.search(str(error))
    code = match.group(1) if match else ""
    if code in _S3_FINAL_CODES:
        return _S3_FINAL_CODES[code](f"{code}: {error}")
    if 400 <= status < 500 and status not in (408, 429):
        return PermissionError(f"HTTP {status}: {error}")
    return ConnectionError(str(error))


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
