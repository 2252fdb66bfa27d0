"""Checkpoint save/restore throughput: edgetune's checkpoint path vs raw boto3 multipart, to the same S3 server.

The S3 server is moto's (tests/s3server.py: a subprocess on loopback, the server the test tiers use). The
checkpoint is a trainer-shaped state (model weights, AdamW state, scheduler, scaler, step, RNG states) of
about --mb megabytes (default 200 x 7 runs, --full 1,000 x 3, --quick 20 x 1). Both sides start from the
same state in memory:
- save, edgetune: `checkpoint.write_checkpoint` (torch.save, sha256, manifest.json) into a temporary folder,
  then `checkpoint.upload_checkpoint` (parallel multipart, manifest last), the `checkpoint_upload_fn` that
  rank 0 hands to `ray.train.report(checkpoint=...)`;
  baseline: `torch.save` to a file, then boto3 `upload_file` (multipart, TransferConfig below);
- restore, edgetune: `checkpoint.find_resume_point` (list, read the manifest, read state.pt through pyarrow,
  check its sha256, `torch.load`), what every rank runs on resume;
  baseline: boto3 `download_file` (multipart ranged GETs), then `torch.load`.
Throughput is state.pt's bytes / seconds. Runs alternate which side goes first; medians are compared. The
upload alone (no serialization, no hashing) and the HTTP requests each side sent (from the server's log)
are recorded too.

Restore reads each object in one GET (`storage.read_whole`); pyarrow's S3 input *stream* read 256 KiB
ranges one after another, which made restore 40x slower than boto3 here before it was replaced.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch

common.use_repo_paths()

from s3server import CREDENTIALS, S3Server  # noqa: E402

from edgetune_trainer.config import StorageSpec  # noqa: E402
from edgetune_trainer.storage.job import JobStorage  # noqa: E402
from edgetune_trainer.training import checkpoint as ckpt  # noqa: E402

GOAL = 0.8
MB = {"quick": 20, "default": 200, "full": 1000}
REPEATS = {"quick": 1, "default": 7, "full": 3}
BUCKET = "bench"
MiB = 1024 * 1024
TRANSFER = {"multipart_threshold": 8 * MiB, "multipart_chunksize": 16 * MiB, "max_concurrency": 10}


def make_state(megabytes: int) -> dict[str, Any]:
    """A state shaped like the trainer's: a stack of 1024x1024 linears plus AdamW's two moments per weight
    (3 x 4 bytes per parameter), after one optimizer step so the optimizer state is real."""
    layers = max(1, round(megabytes * 1e6 / (3 * 4 * (1024 * 1024 + 1024))))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(1024, 1024) for _ in range(layers)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, 1024)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "step": 1,
        "epoch": 0,
        "batch_in_epoch": 1,
        "world_size": 2,
        "rng": [ckpt.capture_rng(), ckpt.capture_rng()],
    }


class Sides:
    """Both ways of saving and restoring, against one server."""

    def __init__(self, server: S3Server, workdir: Path) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        endpoint = server.endpoint
        self.server = server
        self.storage = JobStorage(StorageSpec(uri=f"s3://{BUCKET}/jobs", endpoint=endpoint), "bench", "checkpoint")
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.transfer = TransferConfig(**TRANSFER)
        self.workdir = workdir

    def requests(self) -> int:
        """HTTP requests the server has logged so far."""
        return len(self.server.requests())

    def edgetune_save(self, state: dict[str, Any], step: int) -> dict[str, float]:
        name = ckpt.dir_name(step, "bench")
        before = self.requests()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edgetune-ckpt-", dir=self.workdir) as folder:
            manifest = ckpt.write_checkpoint(Path(folder), {**state, "step": step})
            written = time.perf_counter()
            ckpt.upload_checkpoint(self.storage, Path(folder), name)
        done = time.perf_counter()
        requests = self.requests() - before
        return {
            "seconds": done - started,
            "transfer_s": done - written,
            "bytes": manifest["bytes"],
            "requests": requests,
        }

    def edgetune_restore(self) -> dict[str, float]:
        before = self.requests()
        started = time.perf_counter()
        point = ckpt.find_resume_point(self.storage)
        done = time.perf_counter()
        requests = self.requests() - before
        assert point is not None, "no checkpoint found to restore"
        self.storage.delete_dir(ckpt.CHECKPOINTS_KEY)
        return {"seconds": done - started, "bytes": point.manifest["bytes"], "requests": requests}

    def boto3_save(self, state: dict[str, Any], step: int) -> dict[str, float]:
        path = self.workdir / "boto3-state.pt"
        before = self.requests()
        started = time.perf_counter()
        torch.save({**state, "step": step}, path)
        written = time.perf_counter()
        self.client.upload_file(str(path), BUCKET, "raw/state.pt", Config=self.transfer)
        done = time.perf_counter()
        requests = self.requests() - before
        size = path.stat().st_size
        path.unlink()
        return {"seconds": done - started, "transfer_s": done - written, "bytes": size, "requests": requests}

    def boto3_restore(self) -> dict[str, float]:
        path = self.workdir / "boto3-restored.pt"
        before = self.requests()
        started = time.perf_counter()
        self.client.download_file(BUCKET, "raw/state.pt", str(path), Config=self.transfer)
        downloaded = time.perf_counter()
        torch.load(path, map_location="cpu", weights_only=True)
        done = time.perf_counter()
        requests = self.requests() - before
        size = path.stat().st_size
        path.unlink()
        self.client.delete_object(Bucket=BUCKET, Key="raw/state.pt")
        return {"seconds": done - started, "transfer_s": downloaded - started, "bytes": size, "requests": requests}


def mbps(runs: list[dict[str, float]], key: str = "seconds") -> float:
    """Median throughput in MB/s (1 MB = 10^6 bytes)."""
    return statistics.median(run["bytes"] / run[key] / 1e6 for run in runs)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--mb", type=int, default=None, help="checkpoint size in MB (default 200; --full 1000)")
    parser.add_argument("--repeats", type=int, default=None, help="saves and restores per side (default 7)")
    args = parser.parse_args(argv)
    size = common.size_name(args)
    megabytes, repeats = args.mb or MB[size], args.repeats or REPEATS[size]
    started = time.time()
    os.environ.update(CREDENTIALS)  # pyarrow and boto3 both take the server's dummy keys from the environment
    state = make_state(megabytes)
    runs: dict[str, list[dict[str, float]]] = {
        key: [] for key in ("edgetune_save", "edgetune_restore", "boto3_save", "boto3_restore")
    }
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as folder:
        workdir = Path(folder)
        server = S3Server(workdir).start()
        try:
            server.create_bucket(BUCKET)
            sides = Sides(server, workdir)
            for repeat in range(repeats):
                for side in ("boto3", "edgetune") if repeat % 2 == 0 else ("edgetune", "boto3"):
                    if side == "edgetune":
                        runs["edgetune_save"].append(sides.edgetune_save(state, repeat + 1))
                        runs["edgetune_restore"].append(sides.edgetune_restore())
                    else:
                        runs["boto3_save"].append(sides.boto3_save(state, repeat + 1))
                        runs["boto3_restore"].append(sides.boto3_restore())
                last = {key: value[-1] for key, value in runs.items()}
                print(
                    f"run {repeat + 1}/{repeats}: "
                    + ", ".join(f"{key} {r['bytes'] / r['seconds'] / 1e6:.0f} MB/s" for key, r in last.items()),
                    flush=True,
                )
        finally:
            server.stop()

    size_mb = runs["edgetune_save"][0]["bytes"] / 1e6
    figures = {key: mbps(value) for key, value in runs.items()}
    upload = {"edgetune": mbps(runs["edgetune_save"], "transfer_s"), "boto3": mbps(runs["boto3_save"], "transfer_s")}
    requests = {key: statistics.median(run["requests"] for run in value) for key, value in runs.items()}
    checks = [
        common.check(
            f"checkpoint-{what}",
            f"checkpoint {what} throughput, edgetune / boto3 multipart",
            figures[f"edgetune_{what}"] / figures[f"boto3_{what}"],
            GOAL,
            figure=f"{figures[f'edgetune_{what}']:.0f} vs {figures[f'boto3_{what}']:.0f} MB/s ({size_mb:.0f} MB)",
            note=f"HTTP requests: {requests[f'edgetune_{what}']:.0f} vs {requests[f'boto3_{what}']:.0f}"
            + (f"; upload alone {upload['edgetune']:.0f} vs {upload['boto3']:.0f} MB/s" if what == "save" else ""),
        )
        for what in ("save", "restore")
    ]
    transfer_config = ", ".join(f"{k} {v // MiB if k != 'max_concurrency' else v}" for k, v in TRANSFER.items())
    data = common.result(
        "checkpoint",
        "Checkpoint save/restore: edgetune vs raw boto3 multipart (same moto S3 server)",
        f"A {size_mb:.0f} MB trainer-shaped checkpoint, median of {repeats}. boto3 TransferConfig: {transfer_config} "
        f"(sizes in MiB). Goal (issue 10): save and restore each >= {GOAL} x boto3.",
        checks,
        sizes={"size": size, "checkpoint_mb": round(size_mb, 1), "repeats": repeats},
        details={
            "mb_per_s": figures,
            "upload_alone_mb_per_s": upload,
            "requests": requests,
            "runs": runs,
            "boto3_transfer_config": TRANSFER,
        },
        started=started,
    )
    common.save(data, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
