"""`edgetune run FILE`: one FineTuneJob end to end on this machine, no cluster.

    storage (storage_choice.py) -> checks and plan (train.prepare_run) -> DDP training on a local Ray
    (train.launch_training) -> every export target (exports.py) -> curves (plot.py) -> summary

The trainer and the exporter are the code a cluster runs. What is local: choosing the storage, fitting
the job's resources to this machine, the display, and the way out. Training runs in a thread while the
main thread waits, so a Ctrl-C reaches this code rather than Ray Train's own SIGINT handler (which it
installs only on the main thread): Ray is shut down, the progress history saved, the embedded server's
data mirrored to disk and the server stopped, and the next run resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from huggingface_hub.utils import disable_progress_bars
from rich.console import Console
from rich.logging import RichHandler

from edgetune_trainer import ray_settings
from edgetune_trainer.config import StorageSpec, TrainJobConfig
from edgetune_trainer.local.display import Display, LiveDisplay, summary_tables
from edgetune_trainer.local.exports import run_exports
from edgetune_trainer.local.history import RunHistory
from edgetune_trainer.local.plot import render_curves
from edgetune_trainer.local.storage_choice import LocalStorage
from edgetune_trainer.local.summary import RunSummary
from edgetune_trainer.model.artifact import student_key
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.storage.retry import RetryPolicy, StorageError
from edgetune_trainer.training.checkpoint import CHECKPOINTS_KEY, newest_complete
from edgetune_trainer.training.distill import launch_distillation, prepare_distillation
from edgetune_trainer.training.metrics import PORT_ENV
from edgetune_trainer.training.progress import ProgressEvent
from edgetune_trainer.training.startup import describe, phase_seconds
from edgetune_trainer.training.train import PreparedRun, TrainResult, launch_training, prepare_run

# An unreachable endpoint is reported within seconds: a person is waiting at the terminal, and a local
# store does not come back by itself the way a cluster's might.
QUICK_RETRY = RetryPolicy(attempts=2, first_delay_s=1.0, max_delay_s=1.0)
CURVES_KEY = "curves.png"


class LocalRunError(RuntimeError):
    """The job cannot run on this machine as written; the message says what to change."""


@dataclass(frozen=True)
class RunOptions:
    base_dir: Path  # the job file's folder: relative paths start there, and the default data folder is in it
    fresh: bool = False
    json_output: bool = False
    storage_dir: Path | None = None  # --storage: a plain folder, no server
    data_dir: Path | None = None  # --data-dir: where the embedded server keeps its objects

    @property
    def embedded_data_dir(self) -> Path:
        return self.data_dir or self.base_dir / ".edgetune" / "storage"


def fit_to_machine(config: TrainJobConfig) -> tuple[TrainJobConfig, dict[str, Any], str]:
    """The job's scaling for this machine: `workers` ranks as written, on GPUs when there is one per
    worker, else on CPU; CPUs per worker capped to a share of this machine's cores. Returns the config,
    the ray.init arguments and a description."""
    scaling = config.scaling
    workers = scaling.workers
    gpus = torch.cuda.device_count()
    cpus = os.cpu_count() or 1
    if gpus >= workers:
        gpus_per_worker = max(1, min(scaling.gpus_per_worker, gpus // workers))
        where = f"{workers} DDP worker(s) with {gpus_per_worker} GPU(s) each (NCCL)"
    else:
        gpus_per_worker = 0
        if config.training.precision == "fp16":
            raise LocalRunError(
                f"training.precision fp16 needs a GPU per worker and this machine has {gpus}: "
                "use bf16 or fp32 to run this job here"
            )
        where = f"{workers} DDP worker(s) on CPU (gloo)"
    cpus_per_worker = min(scaling.cpus_per_worker, max(1, cpus // workers))
    local = scaling.model_copy(update={"gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker})
    ray_init = {
        # A Ray of this run's own: not a cluster that `ray start` left running here (which ray.init() would
        # join), whose workers would lack this run's environment (the embedded server's credentials).
        "address": "local",
        # Oversubscribe rather than wait forever: a job asking for more workers than cores still runs.
        "num_cpus": max(cpus, math.ceil(workers * cpus_per_worker)),
        "num_gpus": gpus if gpus_per_worker else 0,
        "include_dashboard": False,
        "log_to_driver": False,  # worker logs stay in Ray's session folder; the display shows the events
        "configure_logging": False,
    }
    return config.model_copy(update={"scaling": local}), ray_init, where


def apply_ray_settings(settings: dict[str, str] = ray_settings.LOCAL) -> None:
    """Turn off what a local training run's Ray does not use (edgetune_trainer/ray_settings.py), before
    `ray.init`: Ray's processes read these at start-up. A variable the user set already is kept."""
    for key, value in settings.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator[Callable[[str], None]]:
    """With --json, stdout carries the summary and nothing else: file descriptor 1 points at stderr for
    the run, so nothing printed meanwhile (by this process, a library, or a process it starts) lands in
    the JSON. Yields the function that writes to the real stdout."""
    if not enabled:
        yield lambda text: print(text, flush=True)
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with open(saved, "w", closefd=False) as real_stdout:

            def write(text: str) -> None:
                real_stdout.write(text + "\n")
                real_stdout.flush()

            yield write
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """A second Ctrl-C must not cut the clean-up short (that would lose the data not yet mirrored)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def configure_logging(console: Console | None) -> None:
    """Warnings and errors only; on a terminal through rich, so they print above the progress bars."""
    handler = RichHandler(console=console, show_path=False) if console else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if console else "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    # transformers reads this when it is imported (by the exporter, later): no tqdm bars of its own.
    disable_progress_bars()
    # Ray's own warnings (token auth of a loopback cluster, its state polling) concern Ray, not the job.
    logging.getLogger("ray").setLevel(logging.ERROR)


class LocalRun:
    """One `edgetune run`: everything between choosing the storage and printing the summary."""

    def __init__(
        self, config: TrainJobConfig, local: LocalStorage, options: RunOptions, console: Console | None
    ) -> None:
        """`console`: draw progress bars on it; None: plain lines on stderr."""
        self.config = config
        self.local = local
        self.options = options
        self.storage = JobStorage(config.storage, config.namespace, config.name, QUICK_RETRY)
        self.display = LiveDisplay(self._checkpoint_uri, console) if console else Display(self._checkpoint_uri)
        self.job_folder = local.job_folder(self.storage)
        self.history = RunHistory()
        job_dir = str(self.job_folder) if self.job_folder else None
        storage = {**local.describe(), "jobUri": self.storage.uri(), "jobDir": job_dir}
        self.summary = RunSummary(job=f"{config.namespace}/{config.name}", storage=storage)
        self._thread: threading.Thread | None = None
        self._startup_marks: dict[str, float] = {}  # the driver's side of the start-up timeline
        self._distilling: str | None = None  # the export target whose student is training now

    def _checkpoint_uri(self, name: str) -> str:
        return self.storage.uri(f"{CHECKPOINTS_KEY}/{name}")

    def execute(self) -> RunSummary:
        try:
            self._run()
        except KeyboardInterrupt:
            self.summary.phase = "Interrupted"
        except (RuntimeError, ValueError, OSError) as err:  # TrainingError, StorageError, DataError, ...
            self.summary.phase = "Failed"
            self.summary.message = str(err)
        finally:
            with sigint_deferred():
                self._wind_down()
        return self.summary

    def _run(self) -> None:
        self.display.note(f"storage: {self.summary.storage['description']}")
        self.config, ray_init, where = fit_to_machine(self.config)
        prepared = prepare_run(self.config, base_dir=self.options.base_dir, fresh=self.options.fresh, retry=QUICK_RETRY)
        if self.options.fresh:
            self.history.save(self.storage)  # an empty history: the old curve ends with the old run
        else:
            self.history = RunHistory.load(self.storage)
        if prepared.finished is not None:
            self.display.note(
                f"{self.summary.job} already finished ({prepared.plan.total_steps} steps): nothing to train; "
                "--fresh trains it again"
            )
            result = prepared.finished
        else:
            self.display.starting(f"starting a local Ray: {where}")
            self._startup_marks["ray_starting"] = time.time()
            apply_ray_settings()
            ray.init(**ray_init)  # here, on the main thread: Ray's SIGTERM handler can only be set there
            self._startup_marks["ray_ready"] = time.time()
            result = self._train(prepared)
        self.summary.result = result
        self._distill(ray_init)
        self._export()
        self.summary.conclude()

    def _train(self, prepared: PreparedRun) -> TrainResult:
        started = time.monotonic()
        try:
            return self._in_thread(lambda: launch_training(prepared, sinks=[self._record, self.display]))
        finally:
            self.summary.train_seconds = time.monotonic() - started

    def _in_thread(self, work: Callable[[], TrainResult]) -> TrainResult:
        """Run `work` off the main thread, which keeps taking Ctrl-C between short waits."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = work()
            except BaseException as err:  # handed to the main thread, which decides what it means
                outcome["error"] = err

        self._thread = threading.Thread(target=run, name="edgetune-train", daemon=True)
        self._thread.start()
        while self._thread.is_alive():
            self._thread.join(0.25)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _distill(self, ray_init: dict[str, Any]) -> None:
        """The students of the export targets with a distill section, each a Ray Train run of its own,
        resumed from its checkpoints like the job's training; a finished one is not trained again."""
        for target in self.config.export:
            if target.distill is None:
                continue
            started = time.monotonic()
            prepared, identity = prepare_distillation(
                self.config, target.name, base_dir=self.options.base_dir, fresh=self.options.fresh, retry=QUICK_RETRY
            )
            if prepared.finished is not None:
                self.display.note(f"student of {target.name} already distilled: {prepared.finished.model_uri}")
                result = prepared.finished
            else:
                self.display.note(
                    f"distilling a student for {target.name}: {prepared.plan.total_steps} steps "
                    f"against the trained model (students/{target.name}/)"
                )
                if not ray.is_initialized():
                    apply_ray_settings()
                    ray.init(**ray_init)
                sink = self._distill_progress(target.name)
                self._distilling = target.name
                result = self._in_thread(
                    lambda p=prepared, i=identity, t=target.name, s=sink: launch_distillation(p, i, t, sinks=[s])
                )
                self._distilling = None
            self.summary.distillations.append(
                {"target": target.name, **result.summary(), "seconds": round(time.monotonic() - started, 2)}
            )

    def _distill_progress(self, target: str) -> Callable[[ProgressEvent], None]:
        def note(event: ProgressEvent) -> None:
            if event.kind in ("progress", "eval", "final"):
                accuracy = "" if event.eval_accuracy is None else f", eval accuracy {event.eval_accuracy:.4f}"
                loss = "" if event.loss is None else f", loss {event.loss:.4f}"
                self.display.note(f"distill {target}: step {event.step}/{event.total_steps}{loss}{accuracy}")
            if event.kind == "checkpoint":  # mirrored first, then said, as the training's checkpoints are
                self.local.sync()
                self.display.note(f"distill {target}: checkpoint at step {event.step}")

        return note

    def _record(self, event: ProgressEvent) -> None:
        """A progress sink: keep the history; after each checkpoint, save it and mirror the storage, so a
        kill loses at most one checkpoint interval."""
        if event.startup and not self.summary.startup_seconds:
            self.summary.startup_seconds = phase_seconds({**self._startup_marks, **dict(event.startup)})
            self.display.note(describe(self.summary.startup_seconds))
        if event.kind == "checkpoint" and event.checkpoint:
            self.summary.checkpoints_written += 1
            event = dataclasses.replace(event, checkpoint_uri=self._checkpoint_uri(event.checkpoint))
        self.history.add(event)
        if event.kind == "checkpoint":
            self.history.save(self.storage)
            self.local.sync()

    def _export(self) -> None:
        started = time.monotonic()
        self.summary.exports = run_exports(
            self.config,
            self.options.base_dir,
            self.storage,
            rebuild=self.options.fresh,
            on_start=self.display.export_started,
            on_done=self.display.export_done,
        )
        self.summary.export_seconds = time.monotonic() - started

    def _wind_down(self) -> None:
        """Whatever happened: stop Ray (its workers write no more), then save the history and the curves.
        The caller then mirrors the storage a last time and stops the embedded server."""
        self.display.close()
        self.summary.history = self.history
        if ray.is_initialized():
            ray.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.history.events("progress"):
            try:
                self.history.save(self.storage)
                self.summary.curves = self._write_curves()
            except (StorageError, OSError) as err:
                logging.getLogger(__name__).warning("could not save the history and curves: %s", err)
        if self.summary.phase == "Interrupted":
            self.summary.message = self._interrupted_message()

    def _write_curves(self) -> str:
        """The PNG goes into the job's storage; its local path is in the job's folder (or next to the job
        file when the storage is remote)."""
        png = render_curves(self.history, f"{self.summary.job}: loss and eval")
        self.storage.write_bytes(CURVES_KEY, png)
        if self.job_folder is not None:
            return str(self.job_folder / CURVES_KEY)  # the embedded server's copy lands there when mirrored
        path = self.options.base_dir / ".edgetune" / f"{self.config.namespace}-{self.config.name}-{CURVES_KEY}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return str(path)

    def _interrupted_message(self) -> str:
        if self._distilling is not None:
            return (
                f"interrupted while distilling the student of {self._distilling}: training is finished; run the "
                "same command again to resume the student from its last checkpoint "
                f"({self.storage.uri(student_key(self._distilling))}/{CHECKPOINTS_KEY}/)"
            )
        if self.summary.result is not None:
            return "interrupted during the exports: training is finished; the next run exports again"
        progress = self.history.events("progress")
        where = f" at step {progress[-1].step}/{progress[-1].total_steps}" if progress else ""
        try:
            latest = newest_complete(self.storage)
        except (StorageError, OSError) as err:
            return f"interrupted{where}; the checkpoints could not be listed: {err}"
        if latest is None:
            return f"interrupted{where}, before the first checkpoint: the next run starts from the beginning"
        name, manifest = latest
        local = f", on disk {self.job_folder / CHECKPOINTS_KEY / name}" if self.job_folder else ""
        return (
            f"interrupted{where}; the last checkpoint is {self._checkpoint_uri(name)} (step {manifest['step']}"
            f"{local}): run the same command again to resume from it"
        )


def run_local(config_for: Callable[[StorageSpec], TrainJobConfig], requested: StorageSpec, options: RunOptions) -> int:
    """Run a job given as `config_for(storage)` (the trainer's config once the storage is chosen) and its
    own storage section; print the summary (a table, or JSON); return the exit code: 0 succeeded, 1 failed
    (training, or an export that missed its budgets), 130 interrupted."""
    started = time.monotonic()
    with json_stdout(options.json_output) as print_json:
        console = Console()
        live = console.is_terminal and not options.json_output
        configure_logging(console if live else None)
        local = LocalStorage.open(requested, options.storage_dir, options.embedded_data_dir)
        try:
            # Ray's local workers inherit the environment present at ray.init: credentials go in first.
            # Metrics stay off unless asked for: no Prometheus scrapes a laptop, and the port may be taken.
            with scoped_environ({**local.credentials, PORT_ENV: os.environ.get(PORT_ENV, "0")}):
                run = LocalRun(config_for(local.spec), local, options, console if live else None)
                summary = run.execute()
        finally:
            with sigint_deferred():
                local.close()
        if options.json_output and summary.phase != "Succeeded":  # the table says it otherwise
            run.display.note(f"{summary.phase}: {summary.message}")
        summary.wall_seconds = time.monotonic() - started
        data = summary.to_dict()
        if options.json_output:
            print_json(json.dumps(data, indent=2))
        else:
            console.print(summary_tables(data))
        return summary.exit_code
