"""What a FineTuneJob should look like now, given its spec, its status and its children: a pure function.

`decide()` reads the observed world (RayJobs of every attempt, export Jobs, the clock) and returns the new
status plus the actions to take (create attempt N, create export Jobs, suspend or resume a RayJob) and the
events to post. The kopf handlers only gather the inputs and carry the actions out, so every rule of the
lifecycle is tested here without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from edgetune_operator.api import Condition, ConditionType, ExportStatus, FineTuneJobSpec, FineTuneJobStatus
from edgetune_operator.render import distill_rayjob_name, rayjob_name
from edgetune_operator.views import ExportJobView, RayJobView, parse_time

TERMINAL_PHASES = ("Succeeded", "Failed")

TRAINER_FIELDS = ("progress", "latestCheckpoint")  # written by the Ray driver's reporter, never by the operator


def now_iso(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Decision:
    status: FineTuneJobStatus
    create_attempt: int | None = None  # create ConfigMap + RayJob for this attempt
    create_distill_attempt: int | None = None  # create the distillation RayJob of this attempt
    distill_config_attempt: int | None = None  # the training attempt whose ConfigMap it mounts
    create_exports: list[str] = field(default_factory=list)  # export target names
    export_attempt: int | None = None  # whose ConfigMap the export Jobs mount
    suspend_rayjob: tuple[str, bool] | None = None  # (name, suspend)
    delete_rayjob: str | None = None
    events: list[Event] = field(default_factory=list)


def status_patch(old: FineTuneJobStatus, new: FineTuneJobStatus) -> dict[str, Any] | None:
    """The merge patch taking `old` to `new` in the operator's fields (a field it dropped becomes null), or
    None when they already agree. The trainer's fields are left out, so the two writers never collide."""
    before, after = old.to_dict(), new.to_dict()
    if before == after:
        return None
    patch: dict[str, Any] = {key: None for key in before if key not in after}
    patch.update(after)
    return {key: value for key, value in patch.items() if key not in TRAINER_FIELDS}


def held(decision: Decision, old: FineTuneJobStatus, reason: str, message: str, now: datetime) -> Decision:
    """`decision` could not be carried out for a reason outside the job (an API the cluster lacks): keep
    the old status, phase Pending, say why once, and let the resync try again."""
    status = old.model_copy(deep=True)
    status.conditions = set_condition(decision.status.conditions, "Launched", "False", reason, message, now)
    status.phase = "Pending"
    events = [Event("Warning", reason, message)] if old.phase != "Pending" else []
    return Decision(status=status, events=events)


def set_condition(
    conditions: list[Condition], type_: ConditionType, status: str, reason: str, message: str, now: datetime
) -> list[Condition]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    moved = previous is None or previous.status != status
    updated = Condition(
        type=type_,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=message[:32_000],
        last_transition_time=now_iso(now) if moved else previous.last_transition_time,
    )
    return [c for c in conditions if c.type != type_] + [updated]


class _Builder:
    """The new status, built up by the rules below; records an event whenever the phase moves."""

    def __init__(self, job_name: str, old: FineTuneJobStatus, generation: int | None, now: datetime) -> None:
        self.job_name = job_name
        self.old = old
        self.now = now
        self.status = old.model_copy(deep=True)
        self.status.observed_generation = generation
        self.decision = Decision(status=self.status)

    def condition(self, type_: ConditionType, status: str, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(self.status.conditions, type_, status, reason, message, self.now)

    def phase(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        self.status.phase = phase  # type: ignore[assignment]
        if phase in TERMINAL_PHASES and not self.status.completion_time:
            self.status.completion_time = now_iso(self.now)
        if self.old.phase != phase:
            self.event(reason, message, warning)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.decision.events.append(Event("Warning" if warning else "Normal", reason, message))

    def fail(self, reason: str, message: str) -> Decision:
        self.condition("Succeeded", "False", reason, message)
        self.condition("Failed", "True", reason, message)
        self.phase("Failed", reason, message, warning=True)
        return self.decision


def decide(
    job_name: str,
    spec: FineTuneJobSpec | None,
    problems: list[str],
    status: FineTuneJobStatus,
    generation: int | None,
    rayjobs: list[RayJobView],
    exports: list[ExportJobView],
    now: datetime,
    setup_problem: str | None = None,
) -> Decision:
    """The next status of a FineTuneJob and what to do to get there (see the module doc)."""
    b = _Builder(job_name, status, generation, now)
    distills = [r for r in rayjobs if r.distill]
    rayjobs = [r for r in rayjobs if not r.distill]
    failed = next((c for c in status.conditions if c.type == "Failed" and c.status == "True"), None)
    rejected = status.phase == "Failed" and failed is not None and failed.reason == "InvalidSpec"
    if status.phase in TERMINAL_PHASES and not rejected:  # finished: nothing moves any more
        return b.decision
    if spec is None:
        b.condition("Validated", "False", "InvalidSpec", "\n".join(problems))
        return b.fail("InvalidSpec", "the spec is invalid: " + "; ".join(problems))
    b.condition("Validated", "True", "Valid", "the spec is valid")
    if rejected:  # the spec was fixed: nothing was ever launched, so start from scratch
        b.status.conditions = [c for c in b.status.conditions if c.type not in ("Failed", "Succeeded")]
        b.status.completion_time = None
    start = parse_time(b.status.start_time)

    deadline = spec.run_policy.active_deadline_seconds
    if deadline is not None and start is not None and (now - start).total_seconds() > deadline:
        active = max(distills or rayjobs, key=lambda r: r.attempt, default=None)
        if active is not None and active.outcome in ("launching", "running", "suspended"):
            b.decision.delete_rayjob = active.name
        return b.fail("DeadlineExceeded", f"runPolicy.activeDeadlineSeconds ({deadline} s) passed")

    if not rayjobs:
        if spec.run_policy.suspend:
            b.condition("Launched", "False", "Suspended", "runPolicy.suspend is true")
            b.phase("Suspended", "Suspended", "held: runPolicy.suspend is true")
            return b.decision
        if setup_problem:
            b.condition("Launched", "False", "SetupProblem", setup_problem)
            b.phase("Pending", "SetupProblem", setup_problem, warning=True)
            return b.decision
        return _launch(b, spec, 1)

    active = max(rayjobs, key=lambda r: r.attempt)
    b.status.attempt = active.attempt
    b.status.ray_job_name = active.name
    outcome = active.outcome

    if spec.run_policy.suspend and outcome in ("launching", "running"):
        if not active.suspend:  # else KubeRay is already tearing the cluster down
            b.decision.suspend_rayjob = (active.name, True)
        b.condition("Training", "False", "Suspended", "runPolicy.suspend is true")
        b.phase("Suspended", "Suspended", f"suspending {active.name}: runPolicy.suspend is true")
        return b.decision
    if not spec.run_policy.suspend and active.suspend and active.suspended_by_us:
        b.decision.suspend_rayjob = (active.name, False)
        b.phase("Launching", "Resumed", f"resuming {active.name} from the latest checkpoint")
        return b.decision

    if outcome == "launching":
        b.phase("Launching", "Launching", f"attempt {active.attempt}: waiting for the Ray cluster ({active.name})")
    elif outcome == "running":
        b.condition("Training", "True", "Running", f"attempt {active.attempt} is training ({active.name})")
        b.phase("Running", "Training", f"attempt {active.attempt} is training ({active.name})")
    elif outcome == "suspended":
        b.condition("Training", "False", "Suspended", f"{active.name} is suspended")
        b.phase("Suspended", "Suspended", f"{active.name} is suspended")
    elif outcome == "failed":
        return _after_failure(b, spec, active)
    else:
        return _after_training(b, spec, active, distills, exports)
    return b.decision


def _after_training(
    b: _Builder, spec: FineTuneJobSpec, trained: RayJobView, distills: list[RayJobView], exports: list[ExportJobView]
) -> Decision:
    """Training succeeded: distil the students the export targets ask for (one RayJob for all of them,
    retried like training within runPolicy.backoffLimit, resuming from the students' checkpoints), then
    export."""
    b.condition("Training", "False", "Completed", f"attempt {trained.attempt} finished training ({trained.name})")
    if not any(target.distill for target in spec.export):
        return _exports(b, spec, trained, exports)
    if not distills:
        return _distill(b, trained, 1)
    active = max(distills, key=lambda r: r.attempt)
    outcome = active.outcome
    if outcome == "succeeded":
        b.condition("Distilled", "True", "Distilled", f"the students are trained ({active.name})")
        return _exports(b, spec, trained, exports)
    if outcome == "failed":
        allowed = spec.run_policy.backoff_limit + 1
        if not active.failure_kind.retry or active.attempt >= allowed:
            return b.fail(
                "DistillationFailed",
                f"distillation attempt {active.attempt} of {allowed} ({active.name}) failed: {active.failure}",
            )
        b.event(
            "DistillationAttemptFailed",
            f"distillation attempt {active.attempt} ({active.name}) failed: {active.failure}",
            warning=True,
        )
        return _distill(b, trained, active.attempt + 1)
    message = f"distillation attempt {active.attempt} is {outcome} ({active.name})"
    b.condition("Distilled", "False", "Distilling", message)
    b.phase("Distilling", "Distilling", message)
    return b.decision


def _distill(b: _Builder, trained: RayJobView, attempt: int) -> Decision:
    b.decision.create_distill_attempt = attempt
    b.decision.distill_config_attempt = trained.attempt
    message = f"distillation attempt {attempt}: RayJob {distill_rayjob_name(b.job_name, attempt)}"
    b.condition("Distilled", "False", "Launched", message)
    b.phase("Distilling", "DistillationLaunched", message)
    return b.decision


def _launch(b: _Builder, spec: FineTuneJobSpec, attempt: int) -> Decision:
    b.decision.create_attempt = attempt
    b.status.attempt = attempt
    b.status.ray_job_name = rayjob_name(b.job_name, attempt)
    if not b.status.start_time:
        b.status.start_time = now_iso(b.now)
    resume = f", resuming from {b.status.latest_checkpoint}" if b.status.latest_checkpoint else ""
    message = f"attempt {attempt} of {spec.run_policy.backoff_limit + 1}: RayJob {b.status.ray_job_name}{resume}"
    b.condition("Launched", "True", "RayJobCreated", message)
    b.condition("Training", "False", "Launching", message)
    b.status.phase = "Launching"
    b.event("Launched", message)
    return b.decision


def _after_failure(b: _Builder, spec: FineTuneJobSpec, failed: RayJobView) -> Decision:
    """Attempt `failed` ended badly: start the next one (it resumes) or give up quoting the reason."""
    reason = failed.failure
    allowed = spec.run_policy.backoff_limit + 1
    if not failed.failure_kind.retry:  # another attempt would fail the same way
        return b.fail(failed.reason or "ValidationFailed", f"attempt {failed.attempt} failed: {reason}")
    if failed.attempt >= allowed:
        return b.fail(
            "BackoffLimitExceeded",
            f"gave up after {failed.attempt} attempt{'s' if failed.attempt != 1 else ''} "
            f"(runPolicy.backoffLimit {spec.run_policy.backoff_limit}); last failure: {reason}",
        )
    b.event("AttemptFailed", f"attempt {failed.attempt} ({failed.name}) failed: {reason}", warning=True)
    return _launch(b, spec, failed.attempt + 1)


def _exports(b: _Builder, spec: FineTuneJobSpec, trained: RayJobView, jobs: list[ExportJobView]) -> Decision:
    """Training (and any distillation) succeeded: one export Job per target; the job ends when every export has."""
    if not spec.export:
        b.condition("Succeeded", "True", "Trained", "training finished; no export targets")
        b.phase("Succeeded", "Succeeded", "training finished; no export targets")
        return b.decision
    by_target = {job.target: job for job in jobs}
    recorded = {e.name: e for e in b.status.exports}
    statuses: list[ExportStatus] = []
    for target in spec.export:
        previous = recorded.get(target.name)
        job = by_target.get(target.name)
        if previous is not None and previous.phase in ("Succeeded", "Failed"):
            statuses.append(previous)  # settled: a Job removed by its TTL is not run again
        elif job is None:
            b.decision.create_exports.append(target.name)
            statuses.append(ExportStatus(name=target.name, phase="Pending", message="export Job created"))
        else:
            statuses.append(_export_status(target.name, job))
    b.decision.export_attempt = trained.attempt if b.decision.create_exports else None
    b.status.exports = statuses
    for entry in statuses:
        if (
            entry.phase in ("Succeeded", "Failed")
            and recorded.get(entry.name, ExportStatus(name="")).phase != entry.phase
        ):
            b.event(
                f"Export{entry.phase}", f"export {entry.name}: {entry.message or entry.phase}", entry.phase == "Failed"
            )
    if any(e.phase not in ("Succeeded", "Failed") for e in statuses):
        b.condition("Exported", "False", "Exporting", f"{len(statuses)} export target(s)")
        b.phase("Exporting", "Exporting", f"exporting {', '.join(t.name for t in spec.export)}")
        return b.decision
    failed = [e for e in statuses if e.phase == "Failed"]
    if failed:
        detail = "; ".join(f"{e.name}: {e.message or 'failed'}" for e in failed)
        b.condition("Exported", "False", "ExportFailed", detail)
        return b.fail("ExportFailed", f"export failed: {detail}")
    b.condition("Exported", "True", "Exported", f"{len(statuses)} export target(s) met their budgets")
    b.condition("Succeeded", "True", "Succeeded", "trained and exported")
    b.phase("Succeeded", "Succeeded", "trained and exported; every export met its budgets")
    return b.decision


def _export_status(target: str, job: ExportJobView) -> ExportStatus:
    report = job.report or {}
    fields = ("uri", "sizeBytes", "latencyMs", "accuracyDrop", "missedBudgets", "candidate", "candidates")
    known = {k: report[k] for k in fields if k in report}
    if job.succeeded:
        return ExportStatus.model_validate(
            {"name": target, "phase": "Succeeded", "message": report.get("message") or "met its budgets", **known}
        )
    if job.failed:
        message = report.get("message") or job.reason or "the export Job failed"
        return ExportStatus.model_validate({"name": target, "phase": "Failed", "message": message, **known})
    return ExportStatus(name=target, phase="Running", message=f"export Job {job.name} is running")
