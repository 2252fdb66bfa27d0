"""Progress of a run, delivered to whoever watches it: the log, `edgetune run`'s display, the operator.

Events reach one Ray queue by two roads: rank 0 puts progress, eval and final events on it directly,
and checkpoint reports (`ray.train.report`) reach it through `QueueCallback`, a `UserCallback` that Ray
Train V2 runs in its controller actor. `ProgressPump`, a thread in the driver, passes each event to the
sinks: any callable taking a `ProgressEvent`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import ray
import ray.train
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger("edgetune.progress")


@dataclass(frozen=True)
class ProgressEvent:
    """One report of rank 0. `kind`: progress | checkpoint | eval | final."""

    kind: str
    step: int
    total_steps: int
    epoch: int
    steps_per_epoch: int = 0  # for a display's per-epoch progress (the last epoch may be cut by maxSteps)
    world_size: int = 1
    loss: float | None = None
    samples_per_second: float | None = None
    eval_accuracy: float | None = None
    eval_macro_f1: float | None = None
    checkpoint: str | None = None
    checkpoint_uri: str | None = None
    checkpoint_bytes: int | None = None
    resumed_from: str | None = None
    pids: tuple[int, ...] = ()  # every rank's worker process, for fault-injection tests
    param_checksums: tuple[float, ...] = ()  # every rank's, on the final event: equal when DDP synced
    # Rank 0's start-up, on a worker group's first progress event: phase name -> wall-clock time (epoch s).
    startup: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], checkpoint_uri: str | None = None) -> ProgressEvent:
        known = {f.name for f in fields(cls)} - {"checkpoint_uri"}
        return cls(**{k: v for k, v in metrics.items() if k in known}, checkpoint_uri=checkpoint_uri)

    @property
    def percent(self) -> int:
        return min(100, int(100 * self.step / self.total_steps)) if self.total_steps else 0


ProgressSink = Callable[[ProgressEvent], None]


class QueueCallback(ray.train.UserCallback):
    """Runs in the Ray Train controller: forwards each checkpoint report, with the checkpoint's
    storage path, to the driver's queue (rank 0 sends every other event to the queue itself)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        uri = getattr(checkpoint, "path", None) if checkpoint is not None else None
        self.queue.put_nowait((metrics[0], uri))


class ProgressPump:
    """Drains the queue on a driver thread and calls every sink; a failing sink is logged, not fatal."""

    def __init__(self, sinks: Sequence[ProgressSink]) -> None:
        self.sinks = list(sinks)
        # The queue's actor lives on the driver's node, which outlives any worker. Left to Ray, it needs a
        # CPU to be placed, so on KubeRay (the head has num-cpus 0) it went to a worker pod; when that pod was
        # lost (seen on kind), every restarted worker group failed writing to the dead queue, forever.
        on_driver_node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0, "scheduling_strategy": on_driver_node})
        self.events: list[ProgressEvent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgetune-progress", daemon=True)

    def callback(self) -> QueueCallback:
        return QueueCallback(self.queue)

    def start(self) -> ProgressPump:
        self._thread.start()
        return self

    def _deliver(self, item: tuple[dict[str, Any], str | None]) -> None:
        event = ProgressEvent.from_metrics(*item)
        self.events.append(event)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:  # a display problem must never stop training
                log.exception("progress sink %r failed", sink)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._deliver(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception as err:  # the queue actor is gone: Ray was shut down under the run (a Ctrl-C)
                log.debug("progress queue closed: %s", err)
                return

    def stop(self) -> None:
        """Deliver what is left, then stop the thread (and the queue, unless Ray is already gone)."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            while True:
                self._deliver(self.queue.get_nowait())
        except Empty:
            self.queue.shutdown()
        except Exception as err:  # Ray was shut down under the run: nothing is left to deliver
            log.debug("progress queue closed: %s", err)


def log_sink(event: ProgressEvent) -> None:
    """One log line per report: progress intervals, checkpoints, evals; never per step."""
    head = f"step {event.step}/{event.total_steps} ({event.percent}%) epoch {event.epoch}"
    if event.kind == "progress":
        log.info("%s loss %.4f, %.1f samples/s", head, event.loss or 0.0, event.samples_per_second or 0.0)
    elif event.kind == "checkpoint":
        log.info(
            "%s checkpoint %s (%.1f MB)",
            head,
            event.checkpoint_uri or event.checkpoint,
            (event.checkpoint_bytes or 0) / 1e6,
        )
    elif event.kind == "eval":
        log.info("%s eval accuracy %.4f, macro-F1 %.4f", head, event.eval_accuracy or 0.0, event.eval_macro_f1 or 0.0)
    elif event.kind == "final":
        log.info("%s finished", head)
