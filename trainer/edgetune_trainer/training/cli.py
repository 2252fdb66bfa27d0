"""`edgetune-train --config FILE|-`: the RayJob entrypoint, also usable by hand.

With `--distill TARGET` (repeatable) or `--distill-all` it trains the students of those export targets
instead (training/distill.py), one after the other: the entrypoint of the distillation RayJob.

The config is the trainer's own file (`TrainJobConfig`), as the operator renders it into a ConfigMap.
Exit codes: 0 trained (or already finished), 2 invalid config, 1 training failed; errors are one
clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from edgetune_trainer.config import TrainJobConfig, load_train_config
from edgetune_trainer.problems import ConfigError


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgetune-train", description="Fine-tune with Ray Train DDP.")
    parser.add_argument("--config", required=True, help="trainer config YAML/JSON file, or - for standard input")
    parser.add_argument("--fresh", action="store_true", help="delete this job's checkpoints and start over")
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts within this run")
    parser.add_argument(
        "--address", default=None, help="Ray address (default: the running cluster, or a new local one)"
    )
    parser.add_argument(
        "--one-worker-per-node",
        action="store_true",
        help="place each training worker on a Ray node of its own (a KubeRay worker pod sized for one)",
    )
    parser.add_argument(
        "--distill",
        action="append",
        default=[],
        metavar="TARGET",
        help="distil the student of this export target (repeatable) instead of training",
    )
    parser.add_argument(
        "--distill-all", action="store_true", help="distil the student of every export target with a distill section"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    text = sys.stdin.read() if args.config == "-" else Path(args.config).read_text(encoding="utf-8")
    try:
        config = load_train_config(yaml.safe_load(text))
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    from edgetune_trainer.storage.job import JobStorage
    from edgetune_trainer.training.checkpoint import CHECKPOINTS_KEY
    from edgetune_trainer.training.progress import log_sink
    from edgetune_trainer.training.status_report import StatusReporter
    from edgetune_trainer.training.train import run_training

    storage = JobStorage(config.storage, config.namespace, config.name)
    reporter = StatusReporter.from_environment(lambda name: storage.uri(f"{CHECKPOINTS_KEY}/{name}"))
    base_dir = None if args.config == "-" else Path(args.config).resolve().parent
    if args.distill_all or args.distill:
        targets = [t.name for t in config.export if t.distill is not None] if args.distill_all else args.distill
        return _distill(config, targets, base_dir, args)
    try:
        result = run_training(
            config,
            base_dir=base_dir,
            sinks=[log_sink, reporter] if reporter else [log_sink],
            fresh=args.fresh,
            max_failures=args.max_failures,
            ray_init={"address": args.address} if args.address else None,
            one_worker_per_node=args.one_worker_per_node,
        )
    except Exception as err:  # every failure ends as one readable line for the RayJob's status
        print(f"edgetune-train: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result.summary()))
    return 0


def _distill(config: TrainJobConfig, targets: list[str], base_dir: Path | None, args: argparse.Namespace) -> int:
    from edgetune_trainer.training.distill import run_distillation

    results = {}
    for target in targets:
        try:
            result = run_distillation(
                config,
                target,
                base_dir=base_dir,
                fresh=args.fresh,
                max_failures=args.max_failures,
                ray_init={"address": args.address} if args.address else None,
                one_worker_per_node=args.one_worker_per_node,
            )
        except Exception as err:  # one readable line for the RayJob's status
            print(f"edgetune-train: {err}", file=sys.stderr)
            return 1
        results[target] = result.summary()
    print(json.dumps({"distilled": results}))
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
