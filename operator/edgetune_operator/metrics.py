"""The operator's Prometheus metrics, served on /metrics; definitions in edgetune_trainer.metric_catalog.

Per-job series (phase, step, attempt, ...) are drawn at scrape time from a book of what the operator last
decided for each job, so they cost one small record per job, not one prometheus_client child per series.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgetune_operator.api import FineTuneJobSpec, FineTuneJobStatus
from edgetune_trainer import metric_catalog as catalog
from edgetune_trainer.metric_instruments import counter, gauge, histogram

FINISHED = ("Succeeded", "Failed")  # status.TERMINAL_PHASES (status.py sits above this module)
ATTEMPT_PHASES = ("Launching", "Running", "Suspended")  # an attempt is live: a failure would use a retry


@dataclass(frozen=True)
class JobSnapshot:
    """What the metrics say about one job, from its spec and the status the operator decided."""

    phase: str
    step: int | None = None  # Running only
    running_since: float | None = None  # Running only: the Training condition's transition, Unix time
    attempt: int | None = None  # while an attempt is live (ATTEMPT_PHASES)
    backoff_limit: int | None = None  # the same, when the spec is valid
    budgets_missed: tuple[tuple[str, int], ...] = ()  # (export target, budgets missed), finished exports only


def snapshot(spec: FineTuneJobSpec | None, status: FineTuneJobStatus) -> JobSnapshot | None:
    """None: the job has no phase yet (nothing to report)."""
    if status.phase is None:
        return None
    running = status.phase == "Running"
    training = next((c for c in status.conditions if c.type == "Training" and c.status == "True"), None)
    since = _unix_time(training.last_transition_time) if running and training else None
    live = status.phase in ATTEMPT_PHASES
    return JobSnapshot(
        phase=status.phase,
        step=(status.progress.step if status.progress else 0) if running else None,
        running_since=since,
        attempt=status.attempt if live and status.attempt else None,
        backoff_limit=spec.run_policy.backoff_limit if live and spec is not None else None,
        budgets_missed=tuple(
            (export.name, len(export.missed_budgets or [])) for export in status.exports if export.phase in FINISHED
        ),
    )


def _unix_time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class JobBook(Collector):
    """The latest snapshot of every job the operator watches, exported as the catalog's per-job gauges."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], JobSnapshot] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, job: JobSnapshot | None) -> None:
        with self._lock:
            if job is None:
                self._jobs.pop((namespace, name), None)
            else:
                self._jobs[(namespace, name)] = job

    def update_step(self, namespace: str, name: str, step: int) -> None:
        """A Running job's new step, from a progress report that changed nothing else."""
        with self._lock:
            job = self._jobs.get((namespace, name))
            if job is not None and job.step is not None:
                self._jobs[(namespace, name)] = replace(job, step=step)

    def counts(self) -> Tally[tuple[str, str]]:
        with self._lock:
            return Tally((namespace, job.phase) for (namespace, _), job in self._jobs.items())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            jobs = sorted(self._jobs.items())

        def family(metric: catalog.Metric) -> GaugeMetricFamily:
            return GaugeMetricFamily(metric.name, metric.help, labels=list(metric.labels))

        totals = family(catalog.JOBS)
        for (namespace, phase), count in sorted(self.counts().items()):
            totals.add_metric([namespace, phase], count)
        phases, steps, since = family(catalog.JOB_PHASE), family(catalog.JOB_STEP), family(catalog.JOB_RUNNING_SINCE)
        attempts, limits = family(catalog.JOB_ATTEMPT), family(catalog.JOB_BACKOFF_LIMIT)
        missed = family(catalog.EXPORT_BUDGETS_MISSED)
        for (namespace, name), job in jobs:
            phases.add_metric([namespace, name, job.phase], 1)
            for per_job, value in ((steps, job.step), (since, job.running_since), (attempts, job.attempt)):
                if value is not None:
                    per_job.add_metric([namespace, name], value)
            if job.backoff_limit is not None:
                limits.add_metric([namespace, name], job.backoff_limit)
            for export, count in job.budgets_missed:
                missed.add_metric([namespace, name, export], count)
        yield from (totals, phases, steps, since, attempts, limits, missed)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = JobBook()
        self.registry.register(self.jobs)
        self.leader = gauge(catalog.LEADER, self.registry)
        self.reconcile_seconds = histogram(catalog.RECONCILE_SECONDS, self.registry)
        self.reconcile_errors = counter(catalog.RECONCILE_ERRORS, self.registry)
        self.launch_seconds = histogram(catalog.LAUNCH_SECONDS, self.registry)
        self.attempts = counter(catalog.ATTEMPTS, self.registry)
        self.exports = counter(catalog.EXPORTS, self.registry)
        # Every result's series exists from the start at 0: a series born at 1 would read as no increase, and
        # the dashboard's "export results" would show the first export as nothing.
        for result in catalog.EXPORT_RESULTS:
            self.exports.labels(result=result)

    def serve(self, port: int) -> int:
        server, _ = start_http_server(port, registry=self.registry)
        return int(server.server_port)
