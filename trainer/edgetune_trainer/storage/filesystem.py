"""The pyarrow filesystem of an S3-compatible endpoint, wrapped so that every operation retries
(RetryingHandler): edgetune's own and Ray Train's, which is handed this filesystem for its run folder.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from edgetune_trainer.config import StorageSpec
from edgetune_trainer.storage.retry import RetryPolicy, StorageError, with_retries

log = logging.getLogger("edgetune.storage")

T = TypeVar("T")


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
