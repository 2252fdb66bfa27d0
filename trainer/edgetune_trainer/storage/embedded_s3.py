"""An S3-compatible server for `edgetune run` on a machine with no object storage: moto's server, on
loopback, with its objects kept in a folder.

Why moto: it installs from PyPI (MinIO has no pip package, and nothing may be downloaded at run time),
it speaks the S3 API that Ray Train (pyarrow), the exporter and `edgetune predict` use, and the test
tiers already run against it. Its store lives in memory, so the folder is the real one: every object is
read from `<data_dir>/<bucket>/<key>` when the server starts, and `mirror()` writes the bucket back
(new and changed objects written, deleted ones removed). The caller mirrors after every checkpoint,
after the exports and on every way out (normal end, error, Ctrl-C), so a hard kill loses at most what
was written since the last mirror: one checkpoint interval.

The server runs in a thread of this process (moto's `ThreadedMotoServer`): it stops with the run, and
Ray's worker processes reach it over HTTP like any endpoint. It accepts any credentials.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BUCKET = "edgetune"
# moto accepts any key pair; the run exports these so Ray workers and pyarrow sign their requests.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "edgetune-local", "AWS_SECRET_ACCESS_KEY": "edgetune-local-secret"}
_PARTIAL = ".edgetune-partial"  # suffix of a file being written; a hard kill can leave one behind
# The files whose presence says a folder is complete (checkpoint, model artifact, export): written after
# the other files of their folder and deleted before them, so a mirror cut short by a kill never leaves
# one describing files that are not there.
_COMMIT_FILES = ("manifest.json", "edgetune-model.json")


def _is_commit_file(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in _COMMIT_FILES


class EmbeddedS3:
    """moto's S3 server on 127.0.0.1 (a free port) serving one bucket persisted in `data_dir/<bucket>/`."""

    def __init__(self, data_dir: Path, bucket: str = BUCKET) -> None:
        self.data_dir = data_dir.resolve()
        self.bucket = bucket
        self.endpoint = ""
        self._server: Any = None
        self._client: Any = None
        self._synced: dict[str, str] = {}  # key -> ETag of the copy on disk, so a mirror skips unchanged objects
        self._lock = threading.Lock()  # mirrors come from the progress thread and the main thread

    @property
    def root(self) -> Path:
        """The folder holding the bucket's objects, one file per key."""
        return self.data_dir / self.bucket

    @property
    def description(self) -> str:
        from moto import __version__

        return f"moto {__version__} S3 server at {self.endpoint}, data in {self.root}"

    def start(self) -> EmbeddedS3:
        import boto3
        from botocore.config import Config
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO on a handler of its own: a line per S3 call otherwise.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 2}),
        )
        self._client.create_bucket(Bucket=self.bucket)
        self._load()
        return self

    def _load(self) -> None:
        """Put every file of the folder into the bucket; empty folders become folder markers (`key/`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and path.name.endswith(_PARTIAL):
                path.unlink()  # an interrupted write; the object it belonged to is the previous copy or none
            elif path.is_file():
                with path.open("rb") as body:
                    self._synced[key] = self._client.put_object(Bucket=self.bucket, Key=key, Body=body)["ETag"]
            elif path.is_dir() and not any(path.iterdir()):
                self._client.put_object(Bucket=self.bucket, Key=f"{key}/", Body=b"")
        log.info("embedded S3: %d objects loaded from %s", len(self._synced), self.root)

    def _listing(self) -> dict[str, str]:
        objects: dict[str, str] = {}
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                objects[item["Key"]] = item["ETag"]
        return objects

    def _local(self, key: str) -> Path | None:
        """The file of `key`, or None for a key that would land outside the folder (`../`): any local
        process can write to a loopback server."""
        path = (self.root / key).resolve()
        return path if path.is_relative_to(self.root) else None

    def mirror(self) -> None:
        """Make the folder equal to the bucket: fetch new and changed objects, delete removed ones."""
        with self._lock:
            objects = self._listing()
            for key in sorted(objects, key=_is_commit_file):
                etag = objects[key]
                path = self._local(key)
                if path is None:
                    log.warning("embedded S3: not writing object %r, its key points outside %s", key, self.root)
                elif key.endswith("/"):  # a folder marker (pyarrow's create_dir)
                    path.mkdir(parents=True, exist_ok=True)
                elif self._synced.get(key) != etag or not path.is_file():
                    self._fetch(key, path)
            # Commit files first, then the rest, children before their folders.
            stale = sorted(self.root.rglob("*"), key=lambda path: (_is_commit_file(path.name), path), reverse=True)
            for path in stale:
                key = path.relative_to(self.root).as_posix()
                if path.is_file() and key not in objects:
                    path.unlink()
                    self._synced.pop(key, None)
                elif path.is_dir() and f"{key}/" not in objects and not any(path.iterdir()):
                    path.rmdir()

    def _fetch(self, key: str, path: Path) -> None:
        """Write one object to disk through a temporary file, so a kill mid-write never leaves a truncated
        copy under the real name."""
        response = self._client.get_object(Bucket=self.bucket, Key=key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + _PARTIAL)
        with partial.open("wb") as out:
            shutil.copyfileobj(response["Body"], out, 1 << 20)
        partial.replace(path)
        self._synced[key] = response["ETag"]

    def stop(self) -> None:
        """Mirror a last time, then stop the server (also when the mirror fails)."""
        if self._server is None:
            return
        try:
            self.mirror()
        finally:
            self._server.stop()
            self._server = None
