"""What the operator's per-job series say about a job, from the status it decided (edgetune_operator.metrics)."""

from __future__ import annotations

from ftjcluster import job_document
from prometheus_client import generate_latest

from edgetune_operator.api import FineTuneJobSpec, FineTuneJobStatus
from edgetune_operator.metrics import OperatorMetrics, snapshot

TRAINING_SINCE = "2026-12-04T03:00:00Z"


def status(**fields: object) -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate(fields)


def spec() -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(job_document(backoffLimit=3)["spec"], by_alias=True, by_name=False)


def test_a_running_job_reports_step_start_attempt_and_limit() -> None:
    running = status(
        phase="Running",
        attempt=2,
        progress={"step": 40, "totalSteps": 100},
        conditions=[{"type": "Training", "status": "True", "reason": "Running", "lastTransitionTime": TRAINING_SINCE}],
    )
    job = snapshot(spec(), running)
    assert job is not None
    assert (job.phase, job.step, job.attempt, job.backoff_limit) == ("Running", 40, 2, 3)
    assert job.running_since == 1_796_353_200.0  # 2026-12-04T03:00:00Z


def test_a_launching_job_has_no_step_and_a_finished_one_no_attempt() -> None:
    launching = snapshot(spec(), status(phase="Launching", attempt=1))
    assert launching is not None and launching.step is None and launching.running_since is None
    assert launching.attempt == 1
    # Exports use no retries of runPolicy.backoffLimit: an exporting job has no live attempt to report.
    exporting = snapshot(spec(), status(phase="Exporting", attempt=4))
    assert exporting is not None and exporting.attempt is None and exporting.backoff_limit is None
    failed = snapshot(spec(), status(phase="Failed", attempt=4))
    assert failed is not None and failed.attempt is None and failed.backoff_limit is None
    assert snapshot(None, status()) is None  # no phase yet: nothing to say


def test_finished_exports_count_their_missed_budgets() -> None:
    exports = [
        {"name": "edge-int8", "phase": "Failed", "missedBudgets": ["maxSizeMB", "maxLatencyMs"]},
        {"name": "edge-fp32", "phase": "Succeeded"},
        {"name": "edge-later", "phase": "Running"},
    ]
    job = snapshot(spec(), status(phase="Failed", exports=exports))
    assert job is not None and job.budgets_missed == (("edge-int8", 2), ("edge-fp32", 0))


def test_the_book_exports_one_series_per_job_and_forgets_deleted_jobs() -> None:
    metrics = OperatorMetrics()
    running = status(phase="Running", attempt=1, progress={"step": 5})
    metrics.jobs.set("ml", "a", snapshot(spec(), running))
    metrics.jobs.set(
        "ml", "b", snapshot(spec(), status(phase="Succeeded", exports=[{"name": "e", "phase": "Succeeded"}]))
    )
    text = generate_latest(metrics.registry).decode()
    assert 'edgetune_job_phase{job="a",namespace="ml",phase="Running"} 1.0' in text
    assert 'edgetune_job_step{job="a",namespace="ml"} 5.0' in text
    assert 'edgetune_job_attempt{job="a",namespace="ml"} 1.0' in text
    assert 'edgetune_export_budgets_missed{job="b",namespace="ml",target="e"} 0.0' in text
    assert 'edgetune_jobs{namespace="ml",phase="Succeeded"} 1.0' in text
    assert 'edgetune_job_step{job="b"' not in text and 'edgetune_job_attempt{job="b"' not in text
    metrics.jobs.set("ml", "a", None)
    assert 'job="a"' not in generate_latest(metrics.registry).decode()
