"""Launch a training run: a Ray Train `TorchTrainer` over `loop.train_loop_per_worker`.

The same function serves the RayJob entrypoint on a cluster (`edgetune-train`, Ray already running)
and `edgetune run` on one machine (a local Ray started here). Storage is checked before Ray starts,
so an unreachable endpoint fails in seconds with its name, not inside a worker.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
from ray.train.torch import TorchTrainer

from edgetune_trainer.config import TrainJobConfig
from edgetune_trainer.data import locate, shard, split_examples
from edgetune_trainer.model.artifact import ARTIFACT_FILE, MODEL_KEY, STUDENTS_KEY
from edgetune_trainer.model.loading import ModelLoadError
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.storage.retry import RetryPolicy
from edgetune_trainer.training import checkpoint as ckpt
from edgetune_trainer.training.loop import train_loop_per_worker
from edgetune_trainer.training.plan import Plan, make_plan
from edgetune_trainer.training.progress import ProgressEvent, ProgressPump, ProgressSink, log_sink

log = logging.getLogger("edgetune.train")


class TrainingError(RuntimeError):
    """Training failed; the message is the root cause a user can act on."""


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    eval_accuracy: float | None
    eval_macro_f1: float | None
    model_uri: str
    resumed_from: str | None
    events: list[ProgressEvent]
    already_finished: bool = False  # the model of a completed run was found: nothing was trained

    def summary(self) -> dict[str, Any]:
        """What the train commands print (one JSON line): steps, eval metrics, where the model is."""
        return {
            "steps": self.steps,
            "totalSteps": self.total_steps,
            "evalAccuracy": self.eval_accuracy,
            "evalMacroF1": self.eval_macro_f1,
            "model": self.model_uri,
            "resumedFrom": self.resumed_from,
            "alreadyFinished": self.already_finished,
        }


def _root_cause(error: BaseException) -> str:
    """The innermost worker error, as `Type: message` (Ray wraps it several times)."""
    failures = getattr(error, "worker_failures", None) or getattr(error, "errors", None)
    if isinstance(failures, dict) and failures:
        error = next(iter(failures.values()))
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def preflight(config: TrainJobConfig, base_dir: Path | None) -> Plan:
    """Surface data and model-path problems in the driver, before any worker starts (and is retried);
    return the plan every rank will follow (the shards are cut to equal length, so rank 0's stands for all)."""
    split = split_examples(config, base_dir)
    plan = make_plan(config, len(shard(split.train, 0, config.scaling.workers, equal=True)))
    source = config.model.source
    if source.startswith("torchvision://"):
        import torchvision

        name = source[len("torchvision://") :].split("@", 1)[0]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ModelLoadError(f"unknown torchvision classification model {name!r} in {source!r}")
    elif not source.startswith(("hf://", "s3://")):
        filesystem, path = locate(source, config.storage, base_dir)
        if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            raise ModelLoadError(f"model source {source!r}: {path} does not exist")
    return plan


def finished_run(
    config: TrainJobConfig, storage: JobStorage, plan: Plan, distilled: Mapping[str, Any] | None = None
) -> TrainResult | None:
    """The result of a run that already completed, or None. Rank 0 writes the model artifact only after
    the last step, and its header records the steps trained and the source: when they match this plan,
    training again would only repeat it (a rerun of `edgetune run`, a RayJob retried after success).
    A student's header must also match `distilled` (its teacher and distillation spec)."""
    key = f"{MODEL_KEY}/{ARTIFACT_FILE}"
    if not storage.exists(key):
        return None
    header = json.loads(storage.read_bytes(key))
    if header.get("steps") != plan.total_steps or header.get("source") != config.model.source:
        return None
    if distilled is not None and any((header.get("distill") or {}).get(k) != v for k, v in distilled.items()):
        return None
    evaluation = header.get("eval") or {}
    return TrainResult(
        steps=plan.total_steps,
        total_steps=plan.total_steps,
        eval_accuracy=evaluation.get("eval_accuracy"),
        eval_macro_f1=evaluation.get("eval_macro_f1"),
        model_uri=storage.uri(MODEL_KEY),
        resumed_from=None,
        events=[],
        already_finished=True,
    )


@dataclass
class PreparedRun:
    """A run checked and planned in the driver, before Ray: `finished` is set when there is nothing to train."""

    config: TrainJobConfig
    storage: JobStorage
    base_dir: Path | None
    plan: Plan
    finished: TrainResult | None


def prepare_run(
    config: TrainJobConfig, *, base_dir: Path | None = None, fresh: bool = False, retry: RetryPolicy | None = None
) -> PreparedRun:
    """Check the storage, the data and the model source; with `fresh`, delete the checkpoints and model."""
    storage = JobStorage(config.storage, config.namespace, config.name, retry)
    storage.check_reachable()
    if fresh:
        storage.delete_dir(ckpt.CHECKPOINTS_KEY)
        storage.delete_dir(MODEL_KEY)
        storage.delete_dir(STUDENTS_KEY)  # distilled from the model deleted above
    base_dir = base_dir.resolve() if base_dir else None  # workers run in other folders
    plan = preflight(config, base_dir)
    return PreparedRun(config, storage, base_dir, plan, finished_run(config, storage, plan))


def run_training(
    config: TrainJobConfig,
    *,
    base_dir: Path | None = None,
    sinks: Sequence[ProgressSink] = (log_sink,),
    fresh: bool = False,
    max_failures: int = 2,
    ray_init: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    one_worker_per_node: bool = False,
) -> TrainResult:
    """Train `config` to completion (resuming from its latest intact checkpoint) and write the model.
    A run whose model is already written for this plan is not trained again (`fresh` starts over)."""
    prepared = prepare_run(config, base_dir=base_dir, fresh=fresh, retry=retry)
    if prepared.finished is not None:
        log.info(
            "%s/%s already finished (%d steps): model at %s; --fresh trains it again",
            config.namespace,
            config.name,
            prepared.plan.total_steps,
            prepared.finished.model_uri,
        )
        return prepared.finished
    return launch_training(
        prepared, sinks=sinks, max_failures=max_failures, ray_init=ray_init, one_worker_per_node=one_worker_per_node
    )


def launch_training(
    prepared: PreparedRun,
    *,
    sinks: Sequence[ProgressSink] = (log_sink,),
    max_failures: int = 2,
    ray_init: dict[str, Any] | None = None,
    one_worker_per_node: bool = False,
    loop: Callable[[dict[str, Any]], None] = train_loop_per_worker,
    loop_extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Run the prepared training on Ray (started here unless it already runs) and wait for it. `loop` is
    what each worker runs, with `loop_extra` in its config (a distillation's target).

    `one_worker_per_node`: each training worker on a Ray node of its own (STRICT_SPREAD), for a cluster
    whose worker pods are each sized for one worker (KubeRay's, as the operator renders it). Ray rounds a
    pod's fractional CPU limit up, so without it two 0.5-CPU workers would share one pod and leave the
    other idle. Locally (one Ray node) workers pack."""
    config, storage, base_dir = prepared.config, prepared.storage, prepared.base_dir
    if not ray.is_initialized():
        ray.init(**(ray_init or {}))

    pump = ProgressPump(sinks).start()
    gpus = config.scaling.gpus_per_worker
    resources = {"CPU": config.scaling.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        loop,
        train_loop_config={
            "job": config.to_dict(),
            "base_dir": str(base_dir) if base_dir else None,
            "run_token": secrets.token_hex(3),
            "progress_queue": pump.queue,
            **(loop_extra or {}),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.scaling.workers,
            use_gpu=gpus > 0,
            resources_per_worker=resources,
            placement_strategy="STRICT_SPREAD" if one_worker_per_node else "PACK",
        ),
        run_config=ray.train.RunConfig(
            name=ckpt.CHECKPOINTS_KEY,
            storage_path=storage.path(),
            storage_filesystem=storage.filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.checkpoint.keep),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=[pump.callback()],
        ),
    )
    try:
        trainer.fit()
    except Exception as err:  # Ray raises its own wrapper types; users need the cause
        raise TrainingError(f"training {config.namespace}/{config.name} failed: {_root_cause(err)}") from err
    finally:
        pump.stop()
    # Result.metrics are those of the latest checkpoint in Ray Train V2; rank 0's final event is the outcome.
    finals = [event for event in pump.events if event.kind == "final"]
    if not finals:
        raise TrainingError(f"training {config.namespace}/{config.name} ended without a final report")
    final = finals[-1]
    return TrainResult(
        steps=final.step,
        total_steps=final.total_steps,
        eval_accuracy=final.eval_accuracy,
        eval_macro_f1=final.eval_macro_f1,
        model_uri=storage.uri(MODEL_KEY),
        resumed_from=final.resumed_from or None,
        events=pump.events,
    )
