"""The lifecycle rules: `status.decide()` over observed RayJobs and export Jobs, without a cluster."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from edgetune_operator.api import FineTuneJobSpec, FineTuneJobStatus, parse_job
from edgetune_operator.status import Decision, decide, held, status_patch
from edgetune_operator.views import KUBERAY_FAILURES, ExportJobView, RayJobView

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def spec(**run_policy: object) -> FineTuneJobSpec:
    document = yaml.safe_load((ROOT / "examples" / "bert-imdb.yaml").read_text())
    document["spec"]["runPolicy"] = {"backoffLimit": 1, **run_policy}
    return parse_job(document).spec


def rayjob(attempt: int, deployment: str = "", job: str = "", reason: str = "", message: str = "", **extra: object):
    obj = {
        "metadata": {"name": f"bert-imdb-a{attempt}", "labels": {"edgetune.dev/attempt": str(attempt)}},
        "spec": {"suspend": extra.get("suspend", False)},
        "status": {"jobDeploymentStatus": deployment, "jobStatus": job, "reason": reason, "message": message},
    }
    if extra.get("ours"):
        obj["metadata"]["annotations"] = {"edgetune.dev/suspended-by": "edgetune"}
    return RayJobView.from_object(obj)


def export_job(complete: bool = False, failed: bool = False, report: dict | None = None) -> ExportJobView:
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"})
    job = {
        "metadata": {"name": "bert-imdb-export-edge-int8", "labels": {"edgetune.dev/export-target": "edge-int8"}},
        "status": {"conditions": conditions},
    }
    pods = []
    if report is not None:
        terminated = {"exitCode": 0 if complete else 1, "message": json.dumps(report)}
        pods.append(
            {
                "metadata": {"creationTimestamp": "2026-11-24T11:00:00Z"},
                "status": {"containerStatuses": [{"state": {"terminated": terminated}}]},
            }
        )
    return ExportJobView.from_objects(job, pods)


def run(
    rayjobs: list[RayJobView],
    status: FineTuneJobStatus | None = None,
    job_spec: FineTuneJobSpec | None = None,
    exports: list[ExportJobView] | None = None,
    now: datetime = NOW,
    **kwargs: object,
) -> Decision:
    return decide(
        "bert-imdb",
        job_spec or spec(),
        [],
        status or FineTuneJobStatus(),
        3,
        rayjobs,
        exports or [],
        now,
        **kwargs,  # type: ignore[arg-type]
    )


def condition(decision: Decision, type_: str) -> tuple[str, str]:
    found = next(c for c in decision.status.conditions if c.type == type_)
    return found.status, found.reason


def test_invalid_spec_fails_with_every_message_and_launches_nothing() -> None:
    problems = ["spec.model.numLabels: must be >= 2", "spec.training.epochs: must be >= 1"]
    decision = decide("bert-imdb", None, problems, FineTuneJobStatus(), 1, [], [], NOW)
    assert decision.status.phase == "Failed"
    validated = next(c for c in decision.status.conditions if c.type == "Validated")
    assert validated.status == "False" and validated.message == "\n".join(problems)
    assert decision.create_attempt is None
    assert [e.type for e in decision.events] == ["Warning"]


def test_first_reconcile_launches_attempt_one() -> None:
    decision = run([])
    assert decision.create_attempt == 1
    assert decision.status.phase == "Launching" and decision.status.attempt == 1
    assert decision.status.ray_job_name == "bert-imdb-a1"
    assert decision.status.start_time == "2026-11-24T12:00:00Z"
    assert decision.status.observed_generation == 3
    assert condition(decision, "Launched") == ("True", "RayJobCreated")


def test_reconcile_is_idempotent() -> None:
    first = run([rayjob(1, "Running", "RUNNING")])
    second = run([rayjob(1, "Running", "RUNNING")], status=first.status)
    assert second.status.to_dict() == first.status.to_dict()
    assert second.events == [] and second.create_attempt is None


def test_mirrors_rayjob_states() -> None:
    assert run([rayjob(1, "Initializing")]).status.phase == "Launching"
    assert run([rayjob(1, "Running", "PENDING")]).status.phase == "Launching"
    running = run([rayjob(1, "Running", "RUNNING")])
    assert running.status.phase == "Running" and condition(running, "Training") == ("True", "Running")
    assert run([rayjob(1, "Suspended")]).status.phase == "Suspended"


def test_failed_attempt_starts_the_next_which_resumes() -> None:
    status = FineTuneJobStatus(latest_checkpoint="s3://b/team-a/bert-imdb/checkpoints/checkpoint_000020-ab12")
    decision = run([rayjob(1, "Failed", "FAILED", "AppFailed", "worker OOM")], status=status)
    assert decision.create_attempt == 2
    assert decision.status.attempt == 2 and decision.status.ray_job_name == "bert-imdb-a2"
    assert decision.status.phase == "Launching"
    launched = next(c for c in decision.status.conditions if c.type == "Launched")
    assert "resuming from s3://b/team-a/bert-imdb/checkpoints/checkpoint_000020-ab12" in launched.message
    assert any(e.reason == "AttemptFailed" and "worker OOM" in e.message for e in decision.events)


def test_gives_up_after_backoff_limit_quoting_the_last_failure() -> None:
    failed = [
        rayjob(1, "Failed", "FAILED", "AppFailed", "first"),
        rayjob(2, "Complete", "FAILED", "AppFailed", "CUDA error"),
    ]
    decision = run(failed)
    assert decision.create_attempt is None
    assert decision.status.phase == "Failed"
    status, reason = condition(decision, "Failed")
    assert (status, reason) == ("True", "BackoffLimitExceeded")
    message = next(c for c in decision.status.conditions if c.type == "Failed").message
    assert "gave up after 2 attempts" in message and "CUDA error" in message
    assert decision.status.completion_time == "2026-11-24T12:00:00Z"


@pytest.mark.parametrize("reason", sorted(KUBERAY_FAILURES))
def test_every_kuberay_failure_reason_has_a_meaning_and_a_retry_decision(reason: str) -> None:
    decision = run([rayjob(1, "Failed", "FAILED", reason, "KubeRay's message")])
    kind = KUBERAY_FAILURES[reason]
    if kind.retry:
        assert decision.create_attempt == 2 and decision.status.phase == "Launching"
        event = next(e for e in decision.events if e.reason == "AttemptFailed")
        assert kind.meaning in event.message and reason in event.message and "KubeRay's message" in event.message
    else:
        assert decision.create_attempt is None and decision.status.phase == "Failed"
        assert condition(decision, "Failed") == ("True", reason)
        message = next(c for c in decision.status.conditions if c.type == "Failed").message
        assert kind.meaning in message and "KubeRay's message" in message


def test_the_grace_period_failure_seen_with_real_kuberay_is_retried_and_explained() -> None:
    # Real KubeRay v1.6.2 set this when its submitter finished but the head never answered.
    message = "The RayJob submitter finished at 2026-12-02T07:00:00Z but the ray job did not reach terminal state"
    decision = run([rayjob(1, "Failed", "", "JobDeploymentStatusTransitionGracePeriodExceeded", message)])
    assert decision.create_attempt == 2
    event = next(e for e in decision.events if e.reason == "AttemptFailed").message
    assert "never reached a final state" in event and "JobDeploymentStatusTransitionGracePeriodExceeded" in event


def test_an_unknown_failure_reason_is_retried_and_quoted() -> None:
    decision = run([rayjob(1, "Failed", "FAILED", "SomethingNewInKubeRay", "details")])
    assert decision.create_attempt == 2
    event = next(e for e in decision.events if e.reason == "AttemptFailed").message
    assert "SomethingNewInKubeRay" in event and "details" in event


def test_deadline_and_validation_failures_are_not_retried() -> None:
    assert run([rayjob(1, "Failed", "FAILED", "DeadlineExceeded")]).status.phase == "Failed"
    assert run([rayjob(1, "ValidationFailed", "", "ValidationFailed", "bad spec")]).create_attempt is None


def test_active_deadline_covers_every_attempt() -> None:
    status = FineTuneJobStatus(start_time="2026-11-24T11:00:00Z", phase="Running")
    decision = run([rayjob(2, "Running", "RUNNING")], status=status, job_spec=spec(activeDeadlineSeconds=1800))
    assert decision.status.phase == "Failed" and decision.delete_rayjob == "bert-imdb-a2"
    assert condition(decision, "Failed") == ("True", "DeadlineExceeded")


def test_suspend_and_resume() -> None:
    held = run([], job_spec=spec(suspend=True))
    assert held.status.phase == "Suspended" and held.create_attempt is None
    suspending = run([rayjob(1, "Running", "RUNNING")], job_spec=spec(suspend=True))
    assert suspending.suspend_rayjob == ("bert-imdb-a1", True) and suspending.status.phase == "Suspended"
    resumed = run([rayjob(1, "Suspended", suspend=True, ours=True)])
    assert resumed.suspend_rayjob == ("bert-imdb-a1", False) and resumed.status.phase == "Launching"
    # A RayJob suspended by someone else (Kueue) is left alone.
    assert run([rayjob(1, "Suspended", suspend=True)]).suspend_rayjob is None


def test_missing_secret_holds_the_launch() -> None:
    decision = run([], setup_problem="Secret team-a/edgetune-s3 (spec.storage.credentialsSecret) does not exist")
    assert decision.create_attempt is None and decision.status.phase == "Pending"
    assert condition(decision, "Launched") == ("False", "SetupProblem")


def test_training_success_creates_exports_then_succeeds() -> None:
    done = rayjob(1, "Complete", "SUCCEEDED")
    exporting = run([done])
    assert exporting.create_exports == ["edge-int8"] and exporting.export_attempt == 1
    assert exporting.status.phase == "Exporting"
    report = {
        "name": "edge-int8",
        "phase": "Succeeded",
        "uri": "s3://b/x",
        "sizeBytes": 110,
        "latencyMs": 4.2,
        "accuracyDrop": 0.3,
    }
    finished = run([done], status=exporting.status, exports=[export_job(complete=True, report=report)])
    assert finished.status.phase == "Succeeded" and finished.create_exports == []
    entry = finished.status.exports[0]
    assert (entry.phase, entry.size_bytes, entry.latency_ms, entry.accuracy_drop) == ("Succeeded", 110, 4.2, 0.3)
    assert condition(finished, "Exported") == ("True", "Exported")
    assert any(e.reason == "ExportSucceeded" for e in finished.events)


def test_failed_export_names_target_and_reason() -> None:
    done = rayjob(1, "Complete", "SUCCEEDED")
    report = {
        "name": "edge-int8",
        "phase": "Failed",
        "message": "latency 95 ms > budget 80 ms",
        "latencyMs": 95.0,
        "missedBudgets": ["maxLatencyMs"],
    }
    decision = run([done], status=run([done]).status, exports=[export_job(failed=True, report=report)])
    assert decision.status.phase == "Failed"
    assert decision.status.exports[0].missed_budgets == ["maxLatencyMs"]  # what EdgetuneExportBudgetMissed counts
    message = next(c for c in decision.status.conditions if c.type == "Failed").message
    assert "edge-int8: latency 95 ms > budget 80 ms" in message


def test_settled_export_is_not_run_again_after_its_job_is_gone() -> None:
    done = rayjob(1, "Complete", "SUCCEEDED")
    status = FineTuneJobStatus.model_validate(
        {"phase": "Exporting", "exports": [{"name": "edge-int8", "phase": "Succeeded"}]}
    )
    decision = run([done], status=status)
    assert decision.create_exports == [] and decision.status.phase == "Succeeded"


def test_finished_job_stays_finished() -> None:
    finished = FineTuneJobStatus(phase="Succeeded")
    decision = run([rayjob(1, "Complete", "SUCCEEDED")], status=finished)
    assert decision.status.phase == "Succeeded" and decision.events == [] and decision.create_exports == []


def test_fixed_spec_after_validation_failure_launches() -> None:
    failed = decide("bert-imdb", None, ["spec.x: bad"], FineTuneJobStatus(), 1, [], [], NOW).status
    decision = run([], status=failed, now=NOW + timedelta(minutes=1))
    assert decision.create_attempt == 1 and decision.status.phase == "Launching"
    assert not any(c.type == "Failed" for c in decision.status.conditions)
    assert decision.status.completion_time is None


def test_suspend_requested_while_kuberay_tears_down() -> None:
    """The RayJob already has suspend: true but KubeRay still reports Running: stay Suspended, patch nothing."""
    decision = run([rayjob(1, "Running", "RUNNING", suspend=True, ours=True)], job_spec=spec(suspend=True))
    assert decision.status.phase == "Suspended" and decision.suspend_rayjob is None


def test_held_keeps_the_old_status_and_says_why_once() -> None:
    launching = run([])
    old = FineTuneJobStatus()
    decision = held(launching, old, "KubeRayMissing", "install KubeRay", NOW)
    assert decision.status.phase == "Pending" and decision.status.attempt == 0
    assert condition(decision, "Launched") == ("False", "KubeRayMissing")
    assert [e.reason for e in decision.events] == ["KubeRayMissing"]
    again = held(run([], status=decision.status), decision.status, "KubeRayMissing", "install KubeRay", NOW)
    assert again.events == [] and again.status.to_dict() == decision.status.to_dict()


def test_failed_job_stays_failed_when_its_rayjobs_are_gone() -> None:
    """Only a job rejected for its spec starts again (when the spec is fixed); one that failed while
    running stays failed even if someone deletes its RayJobs."""
    failed = run([rayjob(1, "Failed", "FAILED", "AppFailed", "x"), rayjob(2, "Failed", "FAILED", "AppFailed", "y")])
    assert failed.status.phase == "Failed"
    after = run([], status=failed.status, now=NOW + timedelta(minutes=5))
    assert after.create_attempt is None and after.status.phase == "Failed" and after.events == []


def test_status_patch_carries_only_the_operators_fields() -> None:
    old = FineTuneJobStatus.model_validate(
        {
            "phase": "Failed",
            "completionTime": "2026-11-24T11:00:00Z",
            "latestCheckpoint": "s3://b/c",
            "progress": {"step": 5},
        }
    )
    assert status_patch(old, old) is None
    new = old.model_copy(update={"phase": "Launching", "completion_time": None, "latest_checkpoint": "s3://b/d"})
    assert status_patch(old, new) == {
        "phase": "Launching",
        "completionTime": None,
        "attempt": 0,
        "conditions": [],
        "exports": [],
    }


# --- distillation: a RayJob of its own between training and the exports -------------------------------


def distill_spec(**run_policy: object) -> FineTuneJobSpec:
    document = yaml.safe_load((ROOT / "examples" / "bert-imdb.yaml").read_text())
    document["spec"]["runPolicy"] = {"backoffLimit": 1, **run_policy}
    document["spec"]["export"][0]["distill"] = {"student": {"layers": 2}}
    return parse_job(document).spec


def distill_rayjob(attempt: int, deployment: str = "", job: str = "", reason: str = "") -> RayJobView:
    labels = {"edgetune.dev/attempt": str(attempt), "edgetune.dev/stage": "distill"}
    return RayJobView.from_object(
        {
            "metadata": {"name": f"bert-imdb-d{attempt}", "labels": labels},
            "spec": {},
            "status": {"jobDeploymentStatus": deployment, "jobStatus": job, "reason": reason},
        }
    )


def test_training_success_with_a_distill_target_launches_the_distillation_before_any_export() -> None:
    trained = rayjob(2, "Complete", "SUCCEEDED")
    decision = run([rayjob(1, "Failed", "FAILED", reason="AppFailed"), trained], job_spec=distill_spec())
    assert (decision.create_distill_attempt, decision.distill_config_attempt) == (1, 2)
    assert decision.create_exports == [] and decision.create_attempt is None
    assert decision.status.phase == "Distilling" and condition(decision, "Distilled") == ("False", "Launched")
    assert decision.status.attempt == 2  # the training attempt stays the job's attempt
    assert any(e.reason == "DistillationLaunched" for e in decision.events)


def test_a_running_distillation_holds_the_exports_and_its_success_releases_them() -> None:
    trained = rayjob(1, "Complete", "SUCCEEDED")
    running = run([trained, distill_rayjob(1, "Running", "RUNNING")], job_spec=distill_spec())
    assert running.status.phase == "Distilling" and running.create_exports == []
    assert running.create_distill_attempt is None  # idempotent: it exists
    done = run([trained, distill_rayjob(1, "Complete", "SUCCEEDED")], status=running.status, job_spec=distill_spec())
    assert done.create_exports == ["edge-int8"] and done.export_attempt == 1
    assert done.status.phase == "Exporting" and condition(done, "Distilled") == ("True", "Distilled")


def test_a_failed_distillation_is_retried_within_the_backoff_limit_then_fails_the_job() -> None:
    trained = rayjob(1, "Complete", "SUCCEEDED")
    first = distill_rayjob(1, "Complete", "FAILED", reason="AppFailed")
    retried = run([trained, first], job_spec=distill_spec())
    assert retried.create_distill_attempt == 2 and retried.create_attempt is None
    assert any(e.reason == "DistillationAttemptFailed" for e in retried.events)
    second = distill_rayjob(2, "Complete", "FAILED", reason="AppFailed")
    failed = run([trained, first, second], status=retried.status, job_spec=distill_spec())
    assert failed.status.phase == "Failed" and failed.create_distill_attempt is None
    assert condition(failed, "Failed") == ("True", "DistillationFailed")
    message = next(c.message for c in failed.status.conditions if c.type == "Failed")
    assert "distillation attempt 2 of 2 (bert-imdb-d2) failed" in message


def test_export_status_carries_the_candidates() -> None:
    trained = rayjob(1, "Complete", "SUCCEEDED")
    candidates = [
        {"name": "teacher-int8", "phase": "Succeeded", "sizeBytes": 110, "accuracy": 0.9, "accuracyDrop": 0.0},
        {"name": "student-int8", "phase": "Succeeded", "sizeBytes": 40, "accuracy": 0.89, "accuracyDrop": 1.0},
    ]
    report = {"name": "edge-int8", "phase": "Succeeded", "sizeBytes": 40, "candidate": "student-int8"}
    report["candidates"] = candidates
    finished = run(
        [trained, distill_rayjob(1, "Complete", "SUCCEEDED")],
        job_spec=distill_spec(),
        exports=[export_job(complete=True, report=report)],
    )
    entry = finished.status.exports[0]
    assert entry.candidate == "student-int8"
    assert [(c.name, c.size_bytes, c.accuracy_drop) for c in entry.candidates or []] == [
        ("teacher-int8", 110, 0.0),
        ("student-int8", 40, 1.0),
    ]
