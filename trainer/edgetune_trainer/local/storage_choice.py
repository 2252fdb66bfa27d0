"""Where a local run keeps its checkpoints, model and exports, in order of precedence:

1. `--storage DIR`: the folder itself (file://DIR), no server;
2. the storage the job file names (spec.storage.uri, with its endpoint): used as is;
3. otherwise the embedded S3 server (storage/embedded_s3.py) with its data in `--data-dir`, by default
   `<folder of the job file>/.edgetune/storage/`: the run talks S3 to it, as it would in a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgetune_trainer.config import StorageSpec
from edgetune_trainer.storage.embedded_s3 import BUCKET, CREDENTIALS, EmbeddedS3
from edgetune_trainer.storage.job import JobStorage

Kind = Literal["folder", "spec", "embedded-s3"]


@dataclass
class LocalStorage:
    spec: StorageSpec
    kind: Kind
    server: EmbeddedS3 | None = None

    @classmethod
    def open(cls, requested: StorageSpec, storage_dir: Path | None, data_dir: Path) -> LocalStorage:
        """Choose the storage; start the embedded server when it is the one."""
        if storage_dir is not None:
            return cls(StorageSpec(uri=f"file://{storage_dir.resolve()}"), "folder")
        if requested.uri is not None:
            return cls(requested, "spec")
        server = EmbeddedS3(data_dir).start()
        return cls(StorageSpec(uri=f"s3://{BUCKET}/", endpoint=server.endpoint), "embedded-s3", server)

    @property
    def credentials(self) -> dict[str, str]:
        """What the run must export into its environment (Ray's local workers inherit it from ray.init):
        the embedded server's key pair; other stores use the caller's own AWS_* variables."""
        return dict(CREDENTIALS) if self.server is not None else {}

    def job_folder(self, storage: JobStorage) -> Path | None:
        """The local folder holding the job's files, when there is one (not for a remote store)."""
        if self.server is not None:
            return self.server.root / storage.path().removeprefix(f"{BUCKET}/")
        if storage.bucket is None:
            return Path(storage.path())
        return None

    def describe(self) -> dict[str, Any]:
        if self.server is not None:
            description = f"embedded {self.server.description}"
        elif str(self.spec.uri).startswith("file://"):
            description = f"local folder {self.spec.uri}" + (" (from the job file)" if self.kind == "spec" else "")
        else:
            description = f"{self.spec.uri} at {self.spec.endpoint or 'AWS S3'} (from the job file)"
        return {
            "kind": self.kind,
            "uri": self.spec.uri,
            "endpoint": self.spec.endpoint,
            "dataDir": str(self.server.root) if self.server else None,
            "description": description,
        }

    def sync(self) -> None:
        """Persist what the embedded server holds (nothing to do for a folder or a real store)."""
        if self.server is not None:
            self.server.mirror()

    def close(self) -> None:
        """Stop the embedded server, after a last mirror."""
        if self.server is not None:
            self.server.stop()
