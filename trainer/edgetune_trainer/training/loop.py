"""The training function every Ray Train worker runs (`TorchTrainer(train_loop_per_worker, ...)`).

One optimizer step = `gradientAccumulation` micro-batches of `batchSizePerWorker` on each of W ranks.
Every decision that makes all ranks call `ray.train.report` or a collective (progress interval,
checkpoint due, epoch end) is a pure function of the step and epoch, so ranks never diverge.

Progress, eval and the final result go from rank 0 straight to the driver's queue (training/progress.py):
`ray.train.report` waits for the Ray Train controller to collect the previous report (it polls about
every 2 s), so it is used only for checkpoints, which Ray must register for keep-N and restore.

Resume: the newest intact checkpoint restores model, optimizer, scheduler, scaler, each rank's RNG,
the epoch and the number of micro-batches consumed in it; the epoch's data order is a function of
(seed, epoch, rank), so training continues exactly where it stopped and no step is trained twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.util.queue import Full
from torch import nn
from torch.utils.data import DataLoader

from edgetune_trainer.config import TrainJobConfig, load_train_config
from edgetune_trainer.data import encode, locate, preprocessing_for, shard, split_examples
from edgetune_trainer.model.artifact import MODEL_KEY
from edgetune_trainer.model.loading import LoadedModel, apply_freeze, load_model, save_artifact
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.training import checkpoint as ckpt
from edgetune_trainer.training.evaluate import all_reduce_floats, evaluate, forward, unwrap
from edgetune_trainer.training.metrics import TrainMetrics
from edgetune_trainer.training.plan import epoch_order, linear_schedule, make_plan, private_generator
from edgetune_trainer.training.startup import StartupMarks

log = logging.getLogger("edgetune.train")


def load_job_model(config: TrainJobConfig, base_dir: Path | None) -> LoadedModel:
    """The job's model, from the hub or torchvision, or from a folder (local, or fetched from s3://)."""
    source = config.model.source
    if source.startswith(("hf://", "torchvision://")):
        return load_model(config.model)
    filesystem, path = locate(source, config.storage, base_dir)
    if source.startswith("s3://"):  # every rank fetches its own copy of the model folder
        local = Path(tempfile.mkdtemp(prefix="edgetune-model-"))
        pafs.copy_files(path, str(local), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
        path = str(local)
    return load_model(config.model, Path(path))


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch
    resumed_from: str | None = None
    interval_loss: list[float] = field(default_factory=list)
    interval_start: float = field(default_factory=time.perf_counter)
    interval_samples: int = 0
    last_eval: dict[str, float] = field(default_factory=dict)


class Worker:
    """One rank's view of the run: model, optimizer, data, and the report/checkpoint protocol."""

    def __init__(self, loop_config: dict[str, Any]) -> None:
        self.startup = StartupMarks.since_process_start()
        self.config = load_train_config(loop_config["job"])
        self.base_dir = Path(loop_config["base_dir"]) if loop_config.get("base_dir") else None
        self.run_token: str = loop_config["run_token"]
        self.progress_queue = loop_config.get("progress_queue")
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.storage = self.run_storage(loop_config)
        training = self.config.training

        torch.manual_seed(training.seed)  # the same new head on every rank
        self.loaded = self.load_model()
        self.startup.mark("model_loaded")
        split = split_examples(self.config, self.base_dir)
        self.train_set = encode(
            shard(split.train, self.rank, self.world, equal=True), self.config, self.loaded.tokenizer
        )
        self.eval_set = encode(
            shard(split.eval, self.rank, self.world, equal=False), self.config, self.loaded.tokenizer
        )
        self.plan = make_plan(self.config, len(self.train_set))
        self.startup.mark("data_ready")
        torch.manual_seed(training.seed + self.rank)  # dropout differs per rank, reproducibly

        self.model = ray.train.torch.prepare_model(self.loaded.model)
        self.pids = tuple(self.gather(os.getpid()))
        self.startup.mark("ddp_ready")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if training.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=training.learning_rate, weight_decay=training.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=training.learning_rate, momentum=0.9, weight_decay=training.weight_decay
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(self.plan.total_steps, training.warmup_ratio)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=training.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(training.precision)
        self.state = TrainState()
        self.metrics = TrainMetrics(self.config.namespace, self.metrics_job()) if self.rank == 0 else None
        if self.metrics:
            self.metrics.serve()

    # --- what a distillation changes (training/distill.py) ---------------------------------------

    def run_storage(self, loop_config: dict[str, Any]) -> JobStorage:
        """Where this run keeps its checkpoints and model: the job's own storage area."""
        return JobStorage(self.config.storage, self.config.namespace, self.config.name)

    def metrics_job(self) -> str:
        """The `job` label of this run's training metrics."""
        return self.config.name

    def load_model(self) -> LoadedModel:
        loaded = load_job_model(self.config, self.base_dir)
        apply_freeze(loaded, self.config.model.freeze)
        return loaded

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = forward(self.model, batch, self.loaded.family)
        return nn.functional.cross_entropy(logits.float(), batch["labels"])

    def artifact_extra(self) -> dict[str, Any]:
        """What the model artifact's header records beyond the model: how it was made."""
        return {"source": self.config.model.source, "steps": self.state.step, "eval": self.state.last_eval}

    # --- resume ---------------------------------------------------------------------------------

    def resume(self) -> None:
        point = ckpt.find_resume_point(self.storage)
        if point is None:
            return
        state = point.state
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state.step, self.state.epoch = state["step"], state["epoch"]
        self.state.batch_in_epoch = state["batch_in_epoch"]
        self.state.resumed_from = point.uri
        if state["world_size"] == self.world:
            ckpt.restore_rng(state["rng"][self.rank])
        elif self.rank == 0:
            log.warning(
                "checkpoint was written by %d workers, now %d: the data order of the current epoch "
                "changes from here on",
                state["world_size"],
                self.world,
            )
        if self.rank == 0:
            log.info("resuming from %s (step %d, epoch %d)", point.uri, self.state.step, self.state.epoch)

    # --- reporting ------------------------------------------------------------------------------

    def _base_metrics(self, kind: str) -> dict[str, Any]:
        return {
            "kind": kind,
            "step": self.state.step,
            "total_steps": self.plan.total_steps,
            "epoch": self.state.epoch,
            "steps_per_epoch": self.plan.steps_per_epoch,
            "resumed_from": self.state.resumed_from or "",
            "world_size": self.world,
            "pids": self.pids,  # every rank's process: fault-injection tests kill a chosen one
            **self.state.last_eval,
        }

    def report_progress(self) -> None:
        state = self.state
        now = time.perf_counter()
        elapsed = now - state.interval_start
        mean_loss, samples = all_reduce_floats(
            [sum(state.interval_loss) / max(1, len(state.interval_loss)), state.interval_samples], self.device
        )
        mean_loss /= self.world
        rate = samples / elapsed if elapsed > 0 else 0.0
        metrics = {**self._base_metrics("progress"), "loss": mean_loss, "samples_per_second": rate}
        if self.rank == 0:
            metrics.update(self.startup.take())  # the first report of a worker group carries its start-up
        if self.metrics:
            self.metrics.record_progress(state.step, state.epoch, mean_loss, rate)
        # The clock restarts before the report, so its cost counts in the next interval's rate.
        state.interval_loss, state.interval_samples, state.interval_start = [], 0, now
        self.emit(metrics)

    def emit(self, event: dict[str, Any]) -> None:
        """Rank 0 sends an event to the driver; no barrier, no wait for the controller."""
        if self.rank == 0 and self.progress_queue is not None:
            try:
                self.progress_queue.put_nowait((event, None))
            except Full:  # the driver is behind: this event is dropped, the next one says more
                log.debug("progress queue full: event dropped")
            except Exception as err:  # progress is for watchers: losing its queue must not stop training
                log.warning("progress events off (%s: %s); training goes on", type(err).__name__, err)
                self.progress_queue = None

    def save_checkpoint(self) -> None:
        started = time.perf_counter()
        rng_states = self.gather(ckpt.capture_rng())
        name = ckpt.dir_name(self.state.step, self.run_token)
        metrics = self._base_metrics("checkpoint")
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        state = {
            "model": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.state.step,
            "epoch": self.state.epoch,
            "batch_in_epoch": self.state.batch_in_epoch,
            "world_size": self.world,
            "rng": rng_states,
        }
        with tempfile.TemporaryDirectory(prefix="edgetune-ckpt-") as folder:
            manifest = ckpt.write_checkpoint(Path(folder), state)
            metrics.update(checkpoint=name, checkpoint_bytes=manifest["bytes"])

            def upload(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
                # Ours, not Ray's pyarrow copy: parallel parts, manifest last, and a failure raises, so
                # Ray never registers (nor keeps-N on account of) a checkpoint that did not land.
                path = ckpt.upload_checkpoint(self.storage, Path(checkpoint.path), dir_name)
                # Ray Train manages (keeps N of) checkpoints on *its* filesystem object: hand back that one.
                run_storage = ray.train.get_context().get_storage()
                return ray.train.Checkpoint(path=path, filesystem=run_storage.storage_filesystem)

            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=name,
                checkpoint_upload_fn=upload,
            )
        seconds = time.perf_counter() - started
        if self.metrics:
            self.metrics.record_checkpoint(seconds, manifest["bytes"])
        log.info("checkpoint %s: step %d, %.1f MB in %.2f s", name, self.state.step, manifest["bytes"] / 1e6, seconds)

    def run_eval(self) -> None:
        result = evaluate(
            unwrap(self.model),
            self.eval_set,
            self.loaded.family,
            self.config.model.num_labels,
            self.config.training.batch_size_per_worker,
            self.device,
        )
        self.state.last_eval = result
        if self.metrics:
            self.metrics.record_eval(result["eval_accuracy"])
        self.emit(self._base_metrics("eval"))

    # --- the loop -------------------------------------------------------------------------------

    def _micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        order = epoch_order(len(self.train_set), self.config.training.seed, self.state.epoch, self.rank)
        start = self.state.batch_in_epoch * self.config.training.batch_size_per_worker
        loader = DataLoader(
            self.train_set,
            batch_size=self.config.training.batch_size_per_worker,
            sampler=order[start:],
            generator=private_generator(),
        )
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _sync_context(self, last_micro_of_step: bool) -> contextlib.AbstractContextManager[None]:
        if last_micro_of_step or not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()  # accumulate locally; all-reduce once per optimizer step

    def train_step_batches(self) -> None:
        """Consume the rest of the current epoch (or stop at total_steps)."""
        training, plan, state = self.config.training, self.plan, self.state
        accumulation = training.gradient_accumulation
        for batch in self._micro_batches():
            index = state.batch_in_epoch  # 0-based micro-batch index in the epoch
            closes_step = (index + 1) % accumulation == 0 or index + 1 == plan.micro_per_epoch
            with self._sync_context(closes_step):
                with torch.autocast(
                    self.device.type,
                    dtype=self.autocast_dtype or torch.float32,
                    enabled=self.autocast_dtype is not None,
                ):
                    loss = self.batch_loss(batch)
                self.scaler.scale(loss / accumulation).backward()
            state.batch_in_epoch += 1
            state.interval_loss.append(float(loss.detach()))
            state.interval_samples += int(batch["labels"].numel())
            if not closes_step:
                continue
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            state.step += 1
            self.startup.mark("first_step")  # once: the first step of this worker group
            if state.step % plan.progress_every == 0:
                self.report_progress()
            if plan.checkpoint_every_steps and state.step % plan.checkpoint_every_steps == 0:
                self.save_checkpoint()
            if state.step >= plan.total_steps:
                return

    def train(self) -> dict[str, Any]:
        self.resume()
        self.model.train()  # from_pretrained returns a model in eval mode: dropout would be off
        plan, state = self.plan, self.state
        while state.step < plan.total_steps:
            self.train_step_batches()
            if state.batch_in_epoch >= plan.micro_per_epoch:  # the epoch is complete
                state.epoch += 1
                state.batch_in_epoch = 0
                self.run_eval()
                if plan.checkpoint_every_epochs and state.epoch % plan.checkpoint_every_epochs == 0:
                    self.save_checkpoint()
        if not state.last_eval:
            self.run_eval()
        if self.rank == 0:
            self.write_artifact()
        checksum = sum(float(p.detach().double().sum()) for p in unwrap(self.model).parameters())
        final = {
            **self._base_metrics("final"),
            "param_checksums": tuple(self.gather(checksum)),  # equal on every rank when DDP kept them in sync
        }
        self.emit(final)
        return final

    def gather(self, value: Any) -> list[Any]:
        """`value` from every rank, in rank order."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def write_artifact(self) -> None:
        """Upload the trained model as a self-describing artifact, header last (readers wait for it)."""
        labels = self.config.model.label_names()
        with tempfile.TemporaryDirectory(prefix="edgetune-model-") as folder:
            final = LoadedModel(
                unwrap(self.model).cpu(),
                self.loaded.family,
                self.loaded.architecture,
                self.loaded.head,
                self.loaded.tokenizer,
            )
            save_artifact(
                final,
                Path(folder),
                task=self.config.model.task,
                labels=labels,
                preprocessing=preprocessing_for(self.config),
                extra=self.artifact_extra(),
            )
            self.storage.delete_dir(MODEL_KEY)
            self.storage.upload_dir(Path(folder), MODEL_KEY, last=("edgetune-model.json",))
        log.info("model artifact written to %s", self.storage.uri(MODEL_KEY))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    run_worker(Worker, loop_config)


def run_worker(worker_type: type[Worker], loop_config: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # Ray logs every report at INFO
    worker = worker_type(loop_config)
    try:
        worker.train()
    except torch.OutOfMemoryError as err:
        raise RuntimeError(
            f"out of memory with batchSizePerWorker={worker.config.training.batch_size_per_worker}: lower it "
            "(raise gradientAccumulation to keep the effective batch) or use precision bf16"
        ) from err
