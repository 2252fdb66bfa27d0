"""`edgetune-export --job-config FILE --target NAME`: export one target of a trained job.

Reads the trainer's job config (the same file `edgetune-train` takes), fetches the final model artifact
from the job's storage (or `--model DIR`), loads eval examples through `data.load_eval_examples`, builds
and checks the export, and publishes it to `<storage>/<namespace>/<job>/exports/<target>/`, manifest
last. Prints the status.exports[] entry as one JSON line on stdout; exits 0 when the export succeeded,
1 when it failed (a budget miss, a corrupt artifact, ...: the message says which), 2 on a bad command
line or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from edgetune_trainer.config import ExportTarget, TrainJobConfig, load_train_config
from edgetune_trainer.problems import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetune-export", description="Export a trained model for the edge.")
    parser.add_argument("--job-config", required=True, type=Path, help="the trainer's job config (YAML or JSON)")
    parser.add_argument("--target", required=True, help="name of the export target (spec.export[].name)")
    parser.add_argument("--model", type=Path, help="local model artifact folder (default: the job's storage)")
    parser.add_argument(
        "--base-dir", type=Path, help="folder relative dataset paths start from (default: the config's)"
    )
    parser.add_argument("--eval-limit", type=int, default=1000, help="eval examples used by the checks")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the latency measurement")
    parser.add_argument("--latency-runs", type=int, default=50, help="timed batch-1 runs (after 5 warm-up runs)")
    parser.add_argument("--parity-samples", type=int, default=64, help="eval examples for the parity check")
    parser.add_argument(
        "--no-accuracy-aware", action="store_true", help="int8: do not keep sensitive layers in fp32 on a miss"
    )
    parser.add_argument("--workdir", type=Path, help="keep the local build here (default: a temporary folder)")
    parser.add_argument("--report-file", type=Path, help="also write the full report (JSON) here")
    parser.add_argument(
        "--status-file",
        type=Path,
        help="also write the status line here, at most 4 KiB (in a pod: /dev/termination-log, read by the operator)",
    )
    return parser


def load_config(path: Path) -> TrainJobConfig:
    """The job config; OSError or yaml.YAMLError when unreadable, ConfigError listing every problem."""
    return load_train_config(yaml.safe_load(path.read_text(encoding="utf-8")))


def find_target(config: TrainJobConfig, name: str) -> ExportTarget:
    for target in config.export:
        if target.name == name:
            return target
    known = ", ".join(target.name for target in config.export) or "none"
    raise KeyError(f"job {config.name!r} has no export target {name!r} (targets: {known})")


def load_examples(config: TrainJobConfig, limit: int, base_dir: Path) -> list[tuple[Any, int]]:
    """The job's eval examples; a data problem becomes an ExportError, so it fails the export with a
    published manifest and a status message instead of a bare traceback."""
    from edgetune_trainer import data  # the data loaders pull in datasets and pyarrow: load them late
    from edgetune_trainer.export.report import ExportError

    try:
        return data.load_eval_examples(config, limit, base_dir=base_dir)
    except (ValueError, OSError) as err:  # data.DataError is a ValueError
        raise ExportError(f"cannot load the eval examples: {err}") from err


def main(argv: list[str] | None = None) -> int:
    from edgetune_trainer.export.report import ExportOptions
    from edgetune_trainer.export.target import run_target

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.job_config)
        target = find_target(config, args.target)
    except (ConfigError, KeyError, OSError, yaml.YAMLError) as err:
        print(f"edgetune-export: {err}", file=sys.stderr)
        return 2
    options = ExportOptions(
        parity_samples=args.parity_samples,
        latency_runs=args.latency_runs,
        threads=args.threads,
        accuracy_aware=not args.no_accuracy_aware,
    )
    # Relative dataset paths are relative to the job file (edgetune export passes the FineTuneJob's folder).
    base_dir = (args.base_dir or args.job_config.resolve().parent).resolve()

    def examples() -> list[tuple[Any, int]]:
        return load_examples(config, args.eval_limit, base_dir)

    with tempfile.TemporaryDirectory(prefix="edgetune-export-") as scratch:
        workdir = args.workdir or Path(scratch)
        report = run_target(config, target, examples, workdir, artifact_dir=args.model, options=options)
    if args.report_file:
        args.report_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.status_file:
        args.status_file.write_text(status_line(report.to_status()))
    print(json.dumps(report.to_status()))
    return 0 if report.succeeded else 1


def status_line(status: dict[str, Any], limit: int = 4096) -> str:
    """Compact ASCII JSON within `limit` bytes (the kubelet truncates termination messages at 4 KiB): only
    the message is shortened, so the figures always survive."""
    text = json.dumps(status, separators=(",", ":"))
    message = str(status.get("message") or "")
    while len(text) > limit and message:
        keep = max(0, len(message) * limit // len(text) - 8)
        message = message[:keep]
        text = json.dumps({**status, "message": message + "..."}, separators=(",", ":"))
    return text


if __name__ == "__main__":
    sys.exit(main())
