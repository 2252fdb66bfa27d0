"""Run the benchmark suite: each benchmark as a subprocess with a timeout, one table, JSON and plot at the end.

    .venv/bin/python bench/run_all.py                 # default sizes: under 15 min on 2 cores   (make bench)
    .venv/bin/python bench/run_all.py --full          # the large sizes                           (make bench-full)
    .venv/bin/python bench/run_all.py --quick         # smoke sizes: does every benchmark run?    (~3 min)
    .venv/bin/python bench/run_all.py --only trainer checkpoint

Every benchmark measures edgetune and its baseline in the same run and states its goal; a crash or timeout of
one is recorded (verdict ERROR, with the tail of its log) and the suite goes on. Output, in
bench/results/<time>/: summary.md (the table), summary.json (every result), summary.png (one panel per check:
the figure as a bar, the goal as a dashed line), and per benchmark <name>.json, <name>.md and <name>.log.
Exit code 0 when every benchmark ran (whatever its verdicts), 1 when one crashed or timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    what: str
    timeout_s: tuple[int, int, int]  # quick, default, full


BENCHMARKS = (
    Benchmark("gpu", "bench_gpu.py", "bf16 BERT-base samples/s and MFU (SKIP without CUDA)", (300, 600, 900)),
    Benchmark("checkpoint", "bench_checkpoint.py", "checkpoint save/restore vs boto3 multipart", (180, 600, 5400)),
    Benchmark("startup", "bench_startup.py", "time to first step: edgetune run vs plain DDP", (300, 600, 1200)),
    Benchmark("trainer", "bench_trainer.py", "DDP throughput vs plain DDP; 1 vs 2 workers", (300, 1200, 2400)),
    Benchmark(
        "ray-levers", "bench_ray_levers.py", "each Ray setting edgetune run turns off, measured", (300, 900, 1500)
    ),
    Benchmark("finetune", "bench_finetune.py", "pretrained MiniLM vs random init; freeze modes", (600, 1200, 1200)),
    Benchmark("export", "bench_export.py", "int8 export: size, speed-up, accuracy (MiniLM, ResNet)", (600, 1200, 2400)),
    Benchmark("distill", "bench_distill.py", "distilled and pruned MiniLM students vs int8 teacher", (900, 2400, 2400)),
    Benchmark("operator", "bench_operator.py", "burst vs bare client; p99, memory at 1,000 jobs", (600, 1800, 3600)),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


def run_one(bench: Benchmark, size: str, out: Path) -> dict[str, Any]:
    """Run one benchmark script; its result, or an ERROR result when it crashed, timed out or wrote nothing."""
    json_out = out / f"{bench.name}.json"
    log_path = out / f"{bench.name}.log"
    timeout = bench.timeout_s[("quick", "default", "full").index(size)]
    command = [sys.executable, str(common.ROOT / "bench" / bench.script), "--json-out", str(json_out)]
    if size != "default":
        command.append(f"--{size}")
    print(f"\n=== {bench.name}: {bench.what}\n$ {' '.join(command[1:])}  (timeout {timeout} s)", flush=True)
    started = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    with log_path.open("w") as log:
        # A session of its own: a timeout kills the benchmark with everything it started (Ray, servers).
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=common.ROOT,
            env=env,
            start_new_session=True,
        )

        def copy() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                print(f"  {line}", end="", flush=True)

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        error = ""
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout} s"
            stop_group(process)
            code = process.wait()
        reader.join(10)
    seconds = time.time() - started
    if not error and code != 0:
        error = f"exited {code}"
    if not error and not json_out.is_file():
        error = "wrote no result"
    if error:
        tail = log_path.read_text(errors="replace").splitlines()[-20:]
        print(f"  ERROR: {bench.name} {error} (log: {log_path})", flush=True)
        return {
            "benchmark": bench.name,
            "title": bench.what,
            "goal": "",
            "checks": [
                {
                    "name": bench.name,
                    "label": bench.what,
                    "value": None,
                    "goal": None,
                    "op": ">=",
                    "unit": "",
                    "figure": f"ERROR: {error}",
                    "verdict": "ERROR",
                    "note": "\n".join(tail),
                }
            ],
            "seconds": round(seconds, 1),
            "error": error,
            "log_tail": tail,
        }
    data = json.loads(json_out.read_text())
    data["wall_seconds"] = round(seconds, 1)
    return data


def stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM the benchmark's process group, then SIGKILL what is left after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def summary_markdown(results: list[dict[str, Any]], size: str, seconds: float, machine: dict[str, Any]) -> str:
    rows = ["| benchmark | check | figure | ratio/value | goal | verdict |", "|---|---|---|---|---|---|"]
    for data in results:
        rows += common.checks_table(data, with_benchmark=True)[2:]
    timings = ", ".join(f"{d['benchmark']} {d.get('wall_seconds', d.get('seconds', 0)):.0f} s" for d in results)
    notes = [
        f"- {d['benchmark']} / {c['label']}: {c['note']}"
        for d in results
        for c in d["checks"]
        if c.get("note") and c["verdict"] != "ERROR"
    ]
    errors = [
        f"- {d['benchmark']}: {d['error']}; last lines:\n\n```\n" + "\n".join(d["log_tail"]) + "\n```"
        for d in results
        if d.get("error")
    ]
    lines = [
        f"# edgetune benchmarks ({size} sizes)",
        "",
        *rows,
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; load average at start "
        f"{machine['load_average']}; commit {machine['commit']}.",
        f"Time: {seconds / 60:.1f} min ({timings}).",
        "",
        *(["## Notes", "", *notes, ""] if notes else []),
        *(["## Errors", "", *errors, ""] if errors else []),
        "## Goals",
        "",
        *(f"- **{d['benchmark']}**: {d['goal']}" for d in results if d.get("goal")),
    ]
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Small multiples: one panel per check, the figure as a bar (green PASS, red MISS, grey reference), the
    goal as a dashed line; SKIP and ERROR panels say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = [(d["benchmark"], c) for d in results for c in d["checks"]]
    if not checks:
        return
    columns = 4
    rows = (len(checks) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    colours = {"PASS": "#2e7d32", "MISS": "#c62828", "": "#757575"}
    for axis, (bench, item) in zip(axes.flat, checks, strict=False):
        axis.set_title(f"{bench}: {item['label']}", fontsize=8, wrap=True)
        axis.set_xticks([])
        if item["value"] is None:
            axis.text(0.5, 0.5, item["verdict"] or "n/a", ha="center", va="center", fontsize=14, color="#757575")
            axis.text(0.5, 0.25, item["figure"][:60], ha="center", va="center", fontsize=6, wrap=True)
            axis.set_yticks([])
            continue
        value = float(item["value"])
        axis.bar([0], [value], width=0.5, color=colours.get(item["verdict"], "#757575"))
        axis.set_xlim(-1, 1)
        top = max(value, item["goal"] or 0.0)
        bottom = min(0.0, value)
        if item["goal"] is not None:
            axis.axhline(item["goal"], color="black", linestyle="--", linewidth=1)
            axis.text(0.98, item["goal"], f"goal {common.goal_text(item)}", ha="right", va="bottom", fontsize=7,
                      transform=axis.get_yaxis_transform())  # fmt: skip
        axis.set_ylim(bottom * 1.2, top * 1.25 if top > 0 else 1)
        axis.text(0.03, 0.97, f"{common.fmt(value, item['unit'])} {item['verdict']}", transform=axis.transAxes,
                  ha="left", va="top", fontsize=9, bbox={"facecolor": "white", "edgecolor": "none"})  # fmt: skip
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(checks) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="benchmarks: " + "; ".join(f"{b.name}: {b.what}" for b in BENCHMARKS),
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="smoke sizes: a fast check that each benchmark runs")
    sizes.add_argument("--full", action="store_true", help="the large sizes")
    parser.add_argument("--only", nargs="+", choices=sorted(BY_NAME), metavar="NAME", help="run only these")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/<time>)")
    args = parser.parse_args(argv)
    size = common.size_name(args)
    chosen = [BY_NAME[name] for name in args.only] if args.only else list(BENCHMARKS)
    out = args.out or common.RESULTS / common.stamp()
    out.mkdir(parents=True, exist_ok=True)
    machine = common.machine_info()
    print(f"edgetune benchmarks, {size} sizes: {', '.join(b.name for b in chosen)} -> {out}", flush=True)
    started = time.time()
    results = [run_one(bench, size, out) for bench in chosen]
    seconds = time.time() - started

    markdown = summary_markdown(results, size, seconds, machine)
    (out / "summary.md").write_text(markdown)
    summary = {"size": size, "seconds": round(seconds, 1), "machine": machine, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    try:
        plot(results, out / "summary.png")
        drawn = f", {out / 'summary.png'}"
    except Exception as err:  # a plotting problem must not lose the table
        drawn = f" (no plot: {err})"
    print("\n" + markdown)
    print(f"written: {out / 'summary.md'}, {out / 'summary.json'}{drawn}", flush=True)
    return 1 if any(d.get("error") for d in results) else 0


if __name__ == "__main__":
    sys.exit(main())
