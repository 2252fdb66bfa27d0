"""What a FineTuneJob's children say, read into the views the lifecycle decides on: each RayJob (attempt,
phase, failure) and each export Job (done, failed, the report its container left).

RayJob status (KubeRay v1): `jobDeploymentStatus` is the cluster side (New, Initializing, Running,
Complete, Failed, Suspending, Suspended, Retrying, Waiting, ValidationFailed), `jobStatus` the Ray job
(PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED), `reason` why it failed: KUBERAY_FAILURES says, for each, what
it means to the user and whether a new attempt is worth it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from edgetune_operator.render import ANNOTATION_SUSPENDED_BY, LABEL_ATTEMPT, LABEL_STAGE, LABEL_TARGET, STAGE_DISTILL

Outcome = Literal["launching", "running", "succeeded", "failed", "suspended"]


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class FailureKind:
    """How the operator reads one of KubeRay's RayJob failure reasons."""

    retry: bool  # a new attempt (which resumes from the latest checkpoint) can succeed where this one failed
    meaning: str  # what happened, in the words of a FineTuneJob's user


# Every JobFailedReason of KubeRay v1.6 (ray-operator/apis/ray/v1/rayjob_types.go). A reason this table lacks
# (a newer KubeRay) is retried and quoted as KubeRay wrote it.
KUBERAY_FAILURES: dict[str, FailureKind] = {
    "AppFailed": FailureKind(True, "the training program exited with an error"),
    "SubmissionFailed": FailureKind(True, "KubeRay could not submit the training program to the Ray head"),
    "JobDeploymentStatusTransitionGracePeriodExceeded": FailureKind(
        True,
        "the submitter finished but the Ray job never reached a final state (the Ray head is unreachable or was lost)",
    ),
    "PreRunningDeadlineExceeded": FailureKind(
        True, "the Ray cluster did not start running in time (pods unschedulable, or images still pulling)"
    ),
    "DeadlineExceeded": FailureKind(False, "runPolicy.activeDeadlineSeconds passed"),
    "ValidationFailed": FailureKind(False, "KubeRay rejected the RayJob the operator rendered"),
}


UNKNOWN_FAILURE = FailureKind(True, "the RayJob failed")


@dataclass(frozen=True)
class RayJobView:
    """The parts of a RayJob the lifecycle needs."""

    name: str
    attempt: int
    suspend: bool
    suspended_by_us: bool
    deployment_status: str
    job_status: str
    reason: str
    message: str
    distill: bool = False  # a distillation's RayJob, not a training attempt's

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> RayJobView:
        meta = obj.get("metadata", {})
        status = obj.get("status") or {}
        return cls(
            name=meta.get("name", ""),
            attempt=int((meta.get("labels") or {}).get(LABEL_ATTEMPT, "0")),
            suspend=bool((obj.get("spec") or {}).get("suspend", False)),
            suspended_by_us=(meta.get("annotations") or {}).get(ANNOTATION_SUSPENDED_BY) == "edgetune",
            deployment_status=status.get("jobDeploymentStatus", "") or "",
            job_status=status.get("jobStatus", "") or "",
            reason=status.get("reason", "") or "",
            message=status.get("message", "") or "",
            distill=(meta.get("labels") or {}).get(LABEL_STAGE) == STAGE_DISTILL,
        )

    @property
    def outcome(self) -> Outcome:
        deployment, job = self.deployment_status, self.job_status
        if deployment in ("Failed", "ValidationFailed") or (deployment == "Complete" and job != "SUCCEEDED"):
            return "failed"
        if job == "SUCCEEDED" and deployment in ("Complete", "Running", ""):
            return "succeeded" if deployment == "Complete" else "running"
        if deployment in ("Suspending", "Suspended"):
            return "suspended"
        if deployment == "Running" and job == "RUNNING":
            return "running"
        return "launching"

    @property
    def failure_kind(self) -> FailureKind:
        reason = self.reason or ("ValidationFailed" if self.deployment_status == "ValidationFailed" else "")
        return KUBERAY_FAILURES.get(reason, UNKNOWN_FAILURE)

    @property
    def failure(self) -> str:
        """Why this attempt failed: what it means, then KubeRay's own words (reason, job status, message)."""
        parts = [self.reason or self.deployment_status, self.message]
        if self.job_status and self.job_status != "SUCCEEDED":
            parts.insert(1, f"job {self.job_status}")
        kuberay = ": ".join(p for p in parts if p)
        return f"{self.failure_kind.meaning} ({kuberay})" if kuberay else self.failure_kind.meaning


@dataclass(frozen=True)
class ExportJobView:
    """One export Job: done or not, and the status line its container left as termination message."""

    target: str
    name: str
    succeeded: bool
    failed: bool
    reason: str
    report: dict[str, Any] | None

    @classmethod
    def from_objects(cls, job: dict[str, Any], pods: list[dict[str, Any]]) -> ExportJobView:
        meta = job.get("metadata", {})
        status = job.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        failed = conditions.get("Failed")
        return cls(
            target=(meta.get("labels") or {}).get(LABEL_TARGET, ""),
            name=meta.get("name", ""),
            succeeded="Complete" in conditions,
            failed=failed is not None,
            reason=(failed or {}).get("message") or (failed or {}).get("reason") or "",
            report=_termination_report(pods),
        )


def _termination_report(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest export container's status line (`edgetune-export --status-file`), if it left one."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((container.get("state") or {}).get("terminated") or {}).get("message")
            if not message:
                continue
            try:
                report = json.loads(message)
            except ValueError:
                continue
            if isinstance(report, dict):
                return report
    return None
