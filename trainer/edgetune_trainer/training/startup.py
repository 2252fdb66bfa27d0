"""Where a worker's start-up time goes, from process start to its first optimizer step.

Rank 0 marks wall-clock times as it starts (`StartupMarks`) and sends them once, with its first progress
event; whoever watches the run (`edgetune run --json`, bench/bench_startup.py) lines them up with its own
clock: the process start, Ray Train entering the training function (imports and the process group done),
model loaded, data ready, DDP wrapped, first step. Wall-clock and not monotonic time, because the marks
are compared across processes (on one machine locally; across pods on a cluster, within clock skew).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_start_time() -> float | None:
    """This process's start, as wall-clock time, from /proc (Linux); None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime in clock ticks


class StartupMarks:
    """Named wall-clock marks, each kept at its first mark; `take()` hands them over once."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.sent = False

    @classmethod
    def since_process_start(cls) -> StartupMarks:
        marks = cls()
        started = process_start_time()
        if started is not None:
            marks.marks["worker_process_started"] = started
        marks.mark("train_function_entered")
        return marks

    def mark(self, name: str) -> None:
        if not self.sent:
            self.marks.setdefault(name, time.time())

    def take(self) -> dict[str, tuple[tuple[str, float], ...]]:
        """{"startup": ((name, time), ...)} the first time, {} after."""
        if self.sent:
            return {}
        self.sent = True
        return {"startup": tuple(sorted(self.marks.items(), key=lambda item: item[1]))}


# Each phase ends at its mark; the phase's time runs from the previous mark present.
PHASES = (
    ("ray_ready", "Ray start"),
    ("worker_process_started", "Train controller and worker processes"),
    ("train_function_entered", "worker imports and process group"),
    ("model_loaded", "model load"),
    ("data_ready", "data"),
    ("ddp_ready", "DDP wrap"),
    ("first_step", "first step"),
)


def phase_seconds(marks: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, in order, from whichever marks are present (the driver's and rank 0's)."""
    result: dict[str, float] = {}
    previous = marks.get("ray_starting")
    for mark, label in PHASES:
        at = marks.get(mark)
        if at is None:
            continue
        if previous is not None:
            result[label] = round(max(0.0, at - previous), 2)
        previous = at
    return result


def describe(seconds: dict[str, float]) -> str:
    return "start-up: " + ", ".join(f"{label} {value:.1f} s" for label, value in seconds.items())
