"""What a training job's Ray does not need, turned off: one table, applied by `edgetune run` (before its
`ray.init`) and by the operator (on the RayJob's head and worker containers).

Measured in bench/bench_ray_levers.py (docs/benchmarks.md has the figures). Each entry is an environment
variable Ray 2.59 reads at start-up; a value the user set already wins (`setdefault`, and the operator puts
these before the user's own env in the pod). What stays on, and why:
- the head's dashboard and its agents: KubeRay submits the job through the dashboard's job API, the
  raylet refuses to start without its agents, and Ray Train needs the runtime-env agent;
- on a cluster, Ray's metrics (the chart's PodMonitor scrapes them), task events (the Ray dashboard's task
  views) and Ray Train's preemption watcher (it notices nodes being drained): each is someone's tool there.
"""

from __future__ import annotations

# Safe everywhere a training job runs.
COMMON: dict[str, str] = {
    # No usage report (and nowhere to send it on an offline cluster); the dashboard process then idles.
    "RAY_USAGE_STATS_ENABLED": "0",
    # The raylet starts one idle Python worker per CPU; Ray Train's actors all carry a runtime_env, so those
    # workers are never used, and on 2 cores their start competes with the run's own start.
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}

# Only for `edgetune run`: one process tree on one machine, watched through edgetune's own display.
LOCAL_ONLY: dict[str, str] = {
    # Nobody scrapes a local run's Ray metrics (edgetune's own training metrics stay on).
    "RAY_enable_metrics_collection": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    # Task events feed the Ray dashboard's task and timeline views, which a local run does not start.
    "RAY_task_events_report_interval_ms": "0",
    "RAY_enable_timeline": "0",
    # Polls for nodes being drained every 5 s; a laptop is not drained.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}

LOCAL: dict[str, str] = {**COMMON, **LOCAL_ONLY}
CLUSTER: dict[str, str] = dict(COMMON)
