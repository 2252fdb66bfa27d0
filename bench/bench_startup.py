"""Time to first step: `edgetune run` vs a plain torch.distributed DDP script, both started as subprocesses here.

The job is the quickstart's (examples/quickstart.yaml: its 2-layer BERT and 1,000 reviews, 2 DDP workers on
gloo, batch 16, sequence 32), cut to a few steps and no export. Each side is timed from the moment this
process starts it to the moment its first optimizer step is done:
- `edgetune run JOB --json --data-dir FRESH_DIR` (the embedded S3 server, as `make quickstart` runs it): its
  first `step 1/N` progress line on stderr (rank 0 reports every step when a run has fewer than 40 steps;
  the line is printed by the driver when the event arrives, so the figure includes that hop);
- `python bench/plain_ddp.py` (spawns 2 ranks that each import torch and transformers, load the model folder,
  tokenize their shard, join a gloo group, wrap in DDP and step): its `FIRST_STEP` line on stdout.
Both include the interpreter start and imports. edgetune's figure also includes what a bare script does not
do: validating the file, starting the S3 server and checking storage, starting a local Ray (GCS, raylet,
dashboard-less), the Ray Train controller and its worker group. The runs alternate (plain, edgetune, then
edgetune, plain, ...); the verdict needs every pair's ratio to clear the goal, and the run's own start-up
breakdown (`startupSeconds` in its JSON summary) says where the time went.

Goal (chosen for issue 10): edgetune / plain <= 1.5. edgetune does real work a bare script skips (above), so
parity is not the bar; but a user iterating on a job should not wait more than half again as long as the
hand-written script before training starts. On a cluster, pod scheduling and image pulls dwarf both.

    .venv/bin/python bench/bench_startup.py [--quick | --full] [--repeats N]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import yaml

GOAL = 1.5
REPEATS = {"quick": 1, "default": 3, "full": 5}
STEPS = 3  # fewer than 40: rank 0 reports every step, so step 1 is seen
QUICKSTART = common.ROOT / "examples" / "quickstart"
TIMEOUT_S = 300


def job_file(folder: Path) -> Path:
    document = {
        "apiVersion": "edgetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "startup"},
        "spec": {
            "model": {"source": str(QUICKSTART / "tiny-bert"), "task": "text-classification", "numLabels": 2},
            "dataset": {"source": str(QUICKSTART / "reviews.jsonl"), "validationFraction": 0.2, "maxLength": 32},
            "training": {"epochs": 0, "maxSteps": STEPS, "batchSizePerWorker": 16, "learningRate": 0.001, "seed": 7},
            "resources": {"workers": 2, "cpusPerWorker": 1},
            "checkpoint": {"everySteps": 1000, "keep": 1},
            "export": [],
        },
    }
    path = folder / "startup.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def edgetune_command() -> list[str]:
    script = Path(sys.executable).parent / "edgetune"
    found = str(script) if script.is_file() else shutil.which("edgetune")
    if not found:
        raise SystemExit("the `edgetune` command is not installed (run `make setup`)")
    return [found]


def timed_run(command: list[str], marker: re.Pattern[str], env: dict[str, str]) -> dict[str, Any]:
    """Start `command`; the seconds until a stdout or stderr line matches `marker`, every line with its time,
    and the exit code (waits for the process to end)."""
    lines: list[tuple[float, str, str]] = []
    first: list[float] = []
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=common.ROOT,
        start_new_session=True,
    )

    def read(stream: Any, name: str) -> None:
        for line in stream:
            now = time.perf_counter() - started
            lines.append((now, name, line.rstrip("\n")))
            if not first and marker.search(line):
                first.append(now)

    readers = [
        threading.Thread(target=read, args=(process.stdout, "stdout"), daemon=True),
        threading.Thread(target=read, args=(process.stderr, "stderr"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        code = process.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:  # a timeout here, or SIGTERM from run_all: stop the child's whole group (its Ray, its S3 server)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    code = process.wait() if code is None else code
    for reader in readers:
        reader.join(10)
    total = time.perf_counter() - started
    if not first:
        tail = "\n".join(text for _, _, text in lines[-25:])
        raise RuntimeError(f"{command[0]} exited {code} without a first step ({marker.pattern}):\n{tail}")
    return {"first_step_s": first[0], "exit_s": total, "exit_code": code, "lines": lines}


def phase(lines: list[tuple[float, str, str]], prefix: str) -> float | None:
    return next((at for at, _, text in lines if text.startswith(prefix)), None)


def breakdown(run: dict[str, Any]) -> dict[str, float]:
    """Where `edgetune run`'s time to first step went: the driver's part before Ray (imports, validation,
    S3 server, storage check), then the phases the run itself reports (`startupSeconds`: Ray start,
    controller and worker processes, worker imports and process group, model, data, DDP, first step),
    then the hop of the step-1 event to the driver's line."""
    summary = json.loads("\n".join(text for _, name, text in run["lines"] if name == "stdout"))
    before_ray = phase(run["lines"], "starting a local Ray")
    phases = {"process start to Ray start (imports, validation, storage)": before_ray or 0.0}
    phases.update(summary.get("startupSeconds") or {})
    phases["first step to the driver's line"] = max(0.0, run["first_step_s"] - sum(phases.values()))
    return {label: round(value, 2) for label, value in phases.items()}


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="runs of each side (default 3; --quick 1)")
    args = parser.parse_args(argv)
    size = common.size_name(args)
    repeats = args.repeats or REPEATS[size]
    started = time.time()
    env = {k: v for k, v in os.environ.items() if k != "EDGETUNE_METRICS_PORT"}
    env["PYTHONUNBUFFERED"] = "1"
    plain_times: list[float] = []
    edgetune_times: list[float] = []
    phases: list[dict[str, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        job = job_file(Path(folder))
        plain = [
            sys.executable,
            str(common.ROOT / "bench" / "plain_ddp.py"),
            *("--model", str(QUICKSTART / "tiny-bert"), "--data", str(QUICKSTART / "reviews.jsonl")),
            *("--workers", "2", "--batch", "16", "--max-length", "32", "--steps", str(STEPS)),
        ]
        for repeat, side in common.alternating(("plain", "edgetune"), repeats):
            if side == "plain":
                run = timed_run(plain, re.compile(r"^FIRST_STEP\b"), env)
                plain_times.append(run["first_step_s"])
            else:
                data_dir = Path(folder) / f"data-{repeat}"  # a fresh store: nothing to resume
                command = [*edgetune_command(), "run", str(job), "--json", "--data-dir", str(data_dir)]
                run = timed_run(command, re.compile(r"^step 1/"), env)
                if run["exit_code"] != 0:
                    tail = "\n".join(text for _, _, text in run["lines"][-15:])
                    raise RuntimeError(f"edgetune run exited {run['exit_code']}:\n{tail}")
                edgetune_times.append(run["first_step_s"])
                phases.append(breakdown(run))
            print(f"{side}: first step after {run['first_step_s']:.1f} s (exit {run['exit_s']:.1f} s)", flush=True)

    plain_s, edgetune_s = statistics.median(plain_times), statistics.median(edgetune_times)
    labels = list(dict.fromkeys(label for run in phases for label in run))
    median_phases = {label: statistics.median(run.get(label, 0.0) for run in phases) for label in labels}
    note = "edgetune's time to first step, median per phase: " + ", ".join(
        f"{label} {seconds:.1f} s" for label, seconds in median_phases.items()
    )
    checks = [
        common.spread_check(
            "startup",
            "time to first step, edgetune run / plain DDP script",
            [e / p for e, p in zip(edgetune_times, plain_times, strict=True)],
            GOAL,
            "<=",
            figure=f"{edgetune_s:.1f} s vs {plain_s:.1f} s (medians)",
            note=note,
        )
    ]
    data = common.result(
        "startup",
        "Time to first step: edgetune run vs a plain DDP script",
        f"The quickstart's model and data, 2 workers (gloo), process start to first optimizer step, median of "
        f"{repeats} alternating runs. Goal (chosen for issue 10): edgetune / plain <= {GOAL}. {note}",
        checks,
        sizes={"size": size, "repeats": repeats, "workers": 2, "steps": STEPS},
        details={
            "plain_s": plain_times,
            "edgetune_s": edgetune_times,
            "edgetune_phases": phases,
            "edgetune_median_phases": median_phases,
        },
        started=started,
    )
    common.save(data, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
