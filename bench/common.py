"""What every benchmark script shares: the command-line flags, the result format, verdicts, machine info.

A benchmark script measures edgetune and its baseline in the same run and writes one JSON result (to
`--json-out`, else `bench/results/<name>-<time>.json`):

    {"benchmark": "trainer", "title": ..., "goal": "the goals, as the issues state them",
     "checks": [{"name", "label", "value", "goal", "op", "unit", "figure", "verdict", "note"}, ...],
     "sizes": {...}, "details": {...}, "machine": {...}, "seconds": ..., "started": ..., "command": [...]}

A check is one figure against one goal: `value op goal` (op one of >=, <=, <, >) gives PASS or MISS; a
check that could not be measured here is SKIP (its note says why); a check with no goal is a reference
figure (verdict ""). `run_all.py` collects the results into one table and plot.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PASS, MISS, SKIP = "PASS", "MISS", "SKIP"
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
VERSIONED = ("torch", "ray", "transformers", "onnxruntime", "pyarrow", "boto3", "moto", "kopf", "kubernetes")


def use_repo_paths() -> None:
    """Import the test helpers (s3server, kubeenv, ...) as the tests do, and the bench modules."""
    for folder in (ROOT / "tests", ROOT / "bench"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark takes: --quick | --full, --json-out."""
    first = (description or "").strip().split("\n\n")[0]
    result = argparse.ArgumentParser(
        description=first, epilog="Goals and method: see the module docstring (python -m pydoc)."
    )
    sizes = result.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="smoke sizes: a fast check that it runs, not a figure")
    sizes.add_argument("--full", action="store_true", help="the large sizes (slower)")
    result.add_argument("--json-out", type=Path, default=None, help="write the JSON result here")
    exit_on_sigterm()  # every benchmark builds its parser first thing
    return result


def exit_on_sigterm() -> None:
    """Turn SIGTERM (run_all's timeout) into SystemExit, so `finally` blocks and context managers stop what
    the benchmark started in sessions of their own (the S3 server, the control plane, child runs)."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def size_name(args: argparse.Namespace) -> str:
    return "quick" if args.quick else "full" if args.full else "default"


# --- checks and verdicts ---------------------------------------------------------------------------


def check(
    name: str,
    label: str,
    value: float | None,
    goal: float | None,
    op: str = ">=",
    *,
    unit: str = "x",
    figure: str = "",
    note: str = "",
) -> dict[str, Any]:
    """One figure against its goal. `value` None means it could not be measured: SKIP."""
    if value is None:
        verdict = SKIP
    elif goal is None:
        verdict = ""  # a reference figure: no goal of its own
    else:
        verdict = PASS if OPS[op](value, goal) else MISS
    return {
        "name": name,
        "label": label,
        "value": value,
        "goal": goal,
        "op": op,
        "unit": unit,
        "figure": figure,
        "verdict": verdict,
        "note": note,
    }


def alternating(sides: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """(repeat, side) in an order that cancels drift on a noisy machine: A B, then B A, then A B, ... so a
    side never always runs first (after a cold cache) or second (after the other warmed the machine)."""
    for repeat in range(repeats):
        for side in sides if repeat % 2 == 0 else tuple(reversed(sides)):
            yield repeat, side


def spread_check(
    name: str,
    label: str,
    ratios: Sequence[float],
    goal: float | None,
    op: str = ">=",
    *,
    figure: str = "",
    note: str = "",
    unit: str = "x",
) -> dict[str, Any]:
    """One goal judged over repeated measurements (each a ratio of two runs taken side by side): the value
    is their median; PASS only when the whole spread (min..max) clears the goal, so that one lucky pair
    never passes and one unlucky pair never hides a clear win behind a median. A spread that straddles the
    goal is a MISS and says so."""
    if not ratios:
        return check(name, label, None, goal, op, unit=unit, figure=figure or "SKIP: nothing measured", note=note)
    low, high = min(ratios), max(ratios)
    item = check(name, label, statistics.median(ratios), goal, op, unit=unit, figure=figure, note=note)
    item["spread"] = [low, high]
    item["samples"] = list(ratios)
    spread = f"median of {len(ratios)}, spread {fmt(low, unit)}..{fmt(high, unit)}"
    if goal is not None:
        worst = low if op in (">=", ">") else high
        item["verdict"] = PASS if OPS[op](worst, goal) else MISS
        if item["verdict"] == MISS and OPS[op](item["value"], goal):
            spread += ": the median clears the goal, the spread does not"
    item["figure"] = f"{figure}; {spread}" if figure else spread
    return item


def skipped(name: str, label: str, goal: float | None, op: str, reason: str, unit: str = "x") -> dict[str, Any]:
    return check(name, label, None, goal, op, unit=unit, figure=f"SKIP: {reason}", note=reason)


def fmt(value: float | None, unit: str = "x") -> str:
    """A figure with its unit, short: 0.905x, 1.62x, 9.7 s, 310 MB/s, 0.42."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3g}x" if value < 10 else f"{value:.1f}x"
    if unit == "pt":
        return f"{value:.2f} pt"
    number = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{number} {unit}" if unit else number


def goal_text(item: dict[str, Any]) -> str:
    if item["goal"] is None:
        return "-" if item["verdict"] == "ERROR" else "(reference)"
    return f"{item['op']} {fmt(item['goal'], item['unit'])}"


def checks_table(result: dict[str, Any], with_benchmark: bool = False) -> list[str]:
    """Markdown rows, one per check."""
    head = (
        "| benchmark | check | figure | ratio/value | goal | verdict |"
        if with_benchmark
        else ("| check | figure | ratio/value | goal | verdict |")
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for item in result["checks"]:
        cells = [
            item["label"],
            item["figure"].replace("|", "/"),
            fmt(item["value"], item["unit"]),
            goal_text(item),
            f"**{item['verdict']}**" if item["verdict"] else "",
        ]
        if with_benchmark:
            cells.insert(0, result["benchmark"])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# --- machine -------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Where the figures were taken: CPU, cores, load, memory, versions, commit (no secrets, no hostname)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": git_commit(),
    }


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


# --- results -------------------------------------------------------------------------------------


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def result(
    benchmark: str,
    title: str,
    goal: str,
    checks: Sequence[dict[str, Any]],
    *,
    sizes: dict[str, Any],
    details: dict[str, Any] | None = None,
    started: float,
) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "title": title,
        "goal": goal,
        "checks": list(checks),
        "sizes": sizes,
        "details": details or {},
        "machine": machine_info(),
        "seconds": round(time.time() - started, 1),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def save(data: dict[str, Any], json_out: Path | None, markdown: str = "") -> Path:
    """Write the JSON result (and, when given, a markdown report beside it); print the checks."""
    path = json_out or RESULTS / f"{data['benchmark']}-{stamp()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    table = "\n".join(checks_table(data))
    report = f"# {data['title']}\n\n{data['goal']}\n\n{table}\n"
    if markdown:
        report += f"\n{markdown.rstrip()}\n"
    path.with_suffix(".md").write_text(report)
    print(f"\n{data['title']}\n{table}\n\nwritten: {path} (and .md)", flush=True)
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
