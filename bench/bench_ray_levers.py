"""What each Ray setting that `edgetune run` turns off is worth (edgetune_trainer/ray_settings.py).

Same job as bench_trainer.py (its BERT, data and 2 workers), run in this process on the Ray `edgetune run`
starts, once with Ray's defaults, once with every setting, and once per lever with only that lever on. Each
run reports three figures: the CPU-seconds of Ray's own processes (everything but the train workers and
this driver, from /proc: bench/proctime.py), the steady-state samples/s, and the seconds from ray.init to
rank 0's first optimizer step. The variants alternate order between repeats; medians are reported.

No goal of its own: these are the levers behind the trainer and startup benchmarks' figures.

    .venv/bin/python bench/bench_ray_levers.py [--quick | --full] [--repeats 2]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_trainer
import common

common.use_repo_paths()

from edgetune_trainer import ray_settings  # noqa: E402

LEVERS: dict[str, tuple[str, ...]] = {  # lever -> the settings it sets (ray_settings.py says why each)
    "usage stats off": ("RAY_USAGE_STATS_ENABLED",),
    "no prestarted workers": ("RAY_enable_worker_prestart", "RAY_prestart_worker_first_driver"),
    "Ray metrics off": ("RAY_enable_metrics_collection", "RAY_TRAIN_METRICS_ENABLED"),
    "task events off": ("RAY_task_events_report_interval_ms", "RAY_enable_timeline"),
    "preemption watcher off": ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",),
}
SIZES = {
    "quick": {"steps": 8, "warmup": 4, "hidden": 64, "layers": 2, "repeats": 1},
    "default": {"steps": 40, "warmup": 10, "hidden": 256, "layers": 4, "repeats": 2},
    "full": {"steps": 60, "warmup": 20, "hidden": 256, "layers": 4, "repeats": 3},
}
BATCH = 16


def variants() -> dict[str, dict[str, str]]:
    covered = {key for keys in LEVERS.values() for key in keys}
    assert covered == set(ray_settings.LOCAL), (
        f"levers and ray_settings.LOCAL differ: {covered ^ set(ray_settings.LOCAL)}"
    )
    result = {"Ray defaults": {}, "all settings (edgetune run)": dict(ray_settings.LOCAL)}
    for lever, keys in LEVERS.items():
        result[f"only {lever}"] = {key: ray_settings.LOCAL[key] for key in keys}
    return result


def ray_own(cpu: dict[str, float]) -> float:
    return sum(seconds for kind, seconds in cpu.items() if kind not in ("train worker", "driver", "other"))


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="runs of each variant (default 2)")
    args = parser.parse_args(argv)
    size = common.size_name(args)
    sizes = SIZES[size]
    repeats = args.repeats or sizes["repeats"]
    started = time.time()
    from edgetune_trainer.synthetic import write_reviews, write_tiny_bert

    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        model_dir = write_tiny_bert(
            Path(folder) / "bert", hidden=sizes["hidden"], layers=sizes["layers"], heads=4, max_length=64
        )
        data = write_reviews(Path(folder) / "reviews.jsonl", 4000, seed=1)
        for repeat, name in common.alternating(tuple(variants()), repeats):
            settings = variants()[name]
            run = bench_trainer.run_edgetune(
                model_dir, data, 2, BATCH, sizes["warmup"], sizes["steps"], ray_env=settings
            )
            figures = {
                "ray_cpu_s": ray_own(run.cpu_seconds),
                "samples_per_second": run.samples_per_second,
                "first_step_s": run.first_step_s,
                "cpu_by_kind": run.cpu_seconds,
            }
            runs.setdefault(name, []).append(figures)
            print(
                f"{name} (repeat {repeat + 1}): Ray's own CPU {figures['ray_cpu_s']:.1f} s, "
                f"{run.samples_per_second:.1f} samples/s, first step {run.first_step_s:.1f} s after ray.init",
                flush=True,
            )

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    base = "Ray defaults"
    lines = [
        "| variant | Ray's own CPU-s | vs defaults | samples/s | vs defaults | ray.init → step 1 | vs defaults |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    checks = []
    for name in runs:
        cpu, rate, first = median(name, "ray_cpu_s"), median(name, "samples_per_second"), median(name, "first_step_s")
        lines.append(
            f"| {name} | {cpu:.1f} | {cpu - median(base, 'ray_cpu_s'):+.1f} | {rate:.1f} "
            f"| {rate / median(base, 'samples_per_second'):.3f}x | {first:.1f} s "
            f"| {first - median(base, 'first_step_s'):+.1f} s |"
        )
        if name != base:
            checks.append(
                common.check(
                    name.replace(" ", "-"),
                    f"Ray levers: {name}, samples/s vs Ray defaults",
                    rate / median(base, "samples_per_second"),
                    None,
                    figure=f"Ray's own CPU {cpu:.1f} s vs {median(base, 'ray_cpu_s'):.1f} s; ray.init → step 1 "
                    f"{first:.1f} s vs {median(base, 'first_step_s'):.1f} s (medians of {repeats})",
                )
            )
    data_out = common.result(
        "ray-levers",
        "Ray levers: what each setting edgetune run turns off is worth",
        f"BERT hidden {sizes['hidden']} x {sizes['layers']} layers, 2 workers, {sizes['steps']} timed steps after "
        f"{sizes['warmup']} warm-up, medians of {repeats} alternating runs per variant. Reference figures.",
        checks,
        sizes={"size": size, **sizes, "repeats": repeats},
        details={"runs": runs},
        started=started,
    )
    common.save(data_out, args.json_out, "\n".join(["## Per variant", "", *lines]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
