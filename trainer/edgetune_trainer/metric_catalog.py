"""Every Prometheus metric edgetune exports: name, type, help, labels and buckets, defined once.

The operator's registry (edgetune_operator.metrics), the trainer's (training/metrics.py), the Grafana
dashboard and the PrometheusRule alerts (both generated into the chart) are all built from this table, so
a renamed metric or label cannot leave a panel or an alert querying a series that no longer exists.

It lives in the trainer package, whose lowest layers the operator already imports (the API models), because
the trainer must not import the operator. Pure data: no prometheus_client import, no Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["gauge", "counter", "histogram"]
Source = Literal["operator", "trainer"]

# Label names. `job` is the FineTuneJob's name: both scrape configs keep it (honorLabels). Series without
# one (edgetune_leader, edgetune_jobs, the reconcile and launch series) and `up` get the scrape job's name,
# which for the operator is OPERATOR_SCRAPE_JOB.
NAMESPACE = "namespace"
JOB = "job"
PHASE = "phase"
TARGET = "target"
RESULT = "result"

# The operator's scrape job: the chart's ServiceMonitor takes it from a label of the metrics Service
# (jobLabel), whatever the release is called, so the OperatorDown alert can name it.
OPERATOR_SCRAPE_JOB = "edgetune-operator"


@dataclass(frozen=True)
class Metric:
    name: str  # the family name; counters export `<name>_total`, histograms `_bucket`, `_sum`, `_count`
    kind: Kind
    help: str
    source: Source
    labels: tuple[str, ...] = ()
    unit: str = "short"  # Grafana's unit id for panels of it
    buckets: tuple[float, ...] = ()

    @property
    def series(self) -> str:
        """The sample name to query: `_total` for a counter, the family name otherwise."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    @property
    def bucket(self) -> str:
        assert self.kind == "histogram", self.name
        return f"{self.name}_bucket"


SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# The operator: one process, the leader, reports what it sees of every job it watches.
JOBS = Metric("edgetune_jobs", "gauge", "FineTuneJobs by namespace and phase", "operator", (NAMESPACE, PHASE), "short")
JOB_PHASE = Metric(
    "edgetune_job_phase",
    "gauge",
    "1 for each FineTuneJob's current phase (one series per job)",
    "operator",
    (NAMESPACE, JOB, PHASE),
)
JOB_STEP = Metric(
    "edgetune_job_step",
    "gauge",
    "Optimizer steps done, as the job's status reports them (Running jobs only)",
    "operator",
    (NAMESPACE, JOB),
)
JOB_RUNNING_SINCE = Metric(
    "edgetune_job_running_since_timestamp_seconds",
    "gauge",
    "When the current attempt started training (Running jobs only), Unix time",
    "operator",
    (NAMESPACE, JOB),
)
JOB_ATTEMPT = Metric(
    "edgetune_job_attempt",
    "gauge",
    "Current attempt, 1-based (while it launches, trains or is suspended)",
    "operator",
    (NAMESPACE, JOB),
)
JOB_BACKOFF_LIMIT = Metric(
    "edgetune_job_backoff_limit",
    "gauge",
    "runPolicy.backoffLimit: retries allowed after the first attempt (as edgetune_job_attempt)",
    "operator",
    (NAMESPACE, JOB),
)
EXPORT_BUDGETS_MISSED = Metric(
    "edgetune_export_budgets_missed",
    "gauge",
    "Budgets the export target's latest export missed (0: met them all)",
    "operator",
    (NAMESPACE, JOB, TARGET),
)
LEADER = Metric(
    "edgetune_leader", "gauge", "1 while this operator replica holds the leader Lease (and reconciles)", "operator"
)
RECONCILE_SECONDS = Metric(
    "edgetune_reconcile_seconds",
    "histogram",
    "Time to reconcile one FineTuneJob",
    "operator",
    unit="s",
    buckets=SECONDS_BUCKETS,
)
RECONCILE_ERRORS = Metric(
    "edgetune_reconcile_errors",
    "counter",
    "Reconciles that ended in an error (retried at the next event or resync)",
    "operator",
)
LAUNCH_SECONDS = Metric(
    "edgetune_launch_seconds",
    "histogram",
    "From FineTuneJob creation to its first RayJob created",
    "operator",
    unit="s",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ATTEMPTS = Metric("edgetune_attempts", "counter", "RayJob attempts started (training and distillation)", "operator")
EXPORTS = Metric("edgetune_exports", "counter", "Export targets finished, by result", "operator", (RESULT,))
EXPORT_RESULTS = ("succeeded", "failed")  # the values of EXPORTS' `result` label

# The trainer: rank 0 of each training run, on its pod's port `train-metrics`.
TRAIN_LABELS = (NAMESPACE, JOB)
TRAIN_LOSS = Metric(
    "edgetune_train_loss", "gauge", "Mean training loss over the last reporting interval", "trainer", TRAIN_LABELS
)
TRAIN_SAMPLES_PER_SECOND = Metric(
    "edgetune_train_samples_per_second",
    "gauge",
    "Training throughput, all workers",
    "trainer",
    TRAIN_LABELS,
    "short",
)
TRAIN_STEP = Metric("edgetune_train_step", "gauge", "Optimizer steps done", "trainer", TRAIN_LABELS)
TRAIN_EPOCH = Metric("edgetune_train_epoch", "gauge", "Current epoch (0-based)", "trainer", TRAIN_LABELS)
EVAL_METRIC = Metric(
    "edgetune_eval_metric",
    "gauge",
    "Eval accuracy (0-1) after the latest epoch",
    "trainer",
    TRAIN_LABELS,
    "percentunit",
)
CHECKPOINT_BYTES = Metric(
    "edgetune_checkpoint_bytes", "gauge", "Size of the latest checkpoint", "trainer", TRAIN_LABELS, "bytes"
)
CHECKPOINT_SECONDS = Metric(
    "edgetune_checkpoint_seconds",
    "histogram",
    "Time to write and upload one checkpoint",
    "trainer",
    TRAIN_LABELS,
    "s",
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

CATALOG: tuple[Metric, ...] = (
    JOBS,
    JOB_PHASE,
    JOB_STEP,
    JOB_RUNNING_SINCE,
    JOB_ATTEMPT,
    JOB_BACKOFF_LIMIT,
    EXPORT_BUDGETS_MISSED,
    LEADER,
    RECONCILE_SECONDS,
    RECONCILE_ERRORS,
    LAUNCH_SECONDS,
    ATTEMPTS,
    EXPORTS,
    TRAIN_LOSS,
    TRAIN_SAMPLES_PER_SECOND,
    TRAIN_STEP,
    TRAIN_EPOCH,
    EVAL_METRIC,
    CHECKPOINT_BYTES,
    CHECKPOINT_SECONDS,
)
