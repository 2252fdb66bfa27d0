"""CPU-seconds spent by each kind of process this benchmark started (Ray's GCS, raylet, agents, train
workers, ...), read from /proc while they run: how much of a 2-core machine Ray's own processes take.

    with ProcessCpu() as cpu:
        ... start Ray, train ...
    cpu.by_kind()  # {"raylet": 3.1, "train worker": 61.0, "driver": 4.2, ...}

A sampler thread reads utime + stime of every descendant of this process every `interval` seconds and keeps
the last figure per pid, so a process that exits loses at most one interval of CPU. Each pid is classified
by its newest command line: Ray renames worker processes (`ray::IDLE`, then `ray::RayTrainWorker...`).
The driver is this process itself (all its threads, from getrusage).
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")

# (substring of the command line, kind); the first match wins.
KINDS = (
    ("gcs_server", "gcs_server"),
    ("/raylet", "raylet"),
    ("dashboard/agent.py", "dashboard agent"),
    ("runtime_env/agent/main.py", "runtime env agent"),
    ("log_monitor.py", "log monitor"),
    ("autoscaler/_private/monitor.py", "autoscaler monitor"),
    ("dashboard/dashboard.py", "dashboard"),
    ("TrainController", "train controller"),
    ("RayTrainWorker", "train worker"),
    ("ray::IDLE", "idle ray worker"),
    ("ray::", "other ray actor/task"),
    ("default_worker.py", "idle ray worker"),
)


def kind_of(command: str) -> str:
    return next((kind for needle, kind in KINDS if needle in command), "other")


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def _descendants(root: int) -> list[int]:
    children = _children_of()
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` so far, in seconds; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def _command(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


class ProcessCpu:
    """Samples the CPU time of this process's descendants while the `with` block runs."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.seconds: dict[int, float] = {}
        self.commands: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._driver_start = 0.0
        self.driver_seconds = 0.0

    def __enter__(self) -> ProcessCpu:
        self._driver_start = self.own_seconds()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.driver_seconds = self.own_seconds() - self._driver_start

    @staticmethod
    def own_seconds() -> float:
        """CPU-seconds of this process so far, all threads."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for pid in _descendants(os.getpid()):
            seconds, command = cpu_seconds(pid), _command(pid)
            if seconds is not None:
                self.seconds[pid] = seconds
            if command:
                self.commands[pid] = command

    def by_kind(self) -> dict[str, float]:
        totals: dict[str, float] = {"driver": round(self.driver_seconds, 2)}
        for pid, seconds in self.seconds.items():
            kind = kind_of(self.commands.get(pid, ""))
            totals[kind] = round(totals.get(kind, 0.0) + seconds, 2)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))
