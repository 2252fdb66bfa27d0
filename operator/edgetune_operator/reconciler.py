"""One reconcile of one FineTuneJob: read the world, `status.decide()`, carry the decision out.

Level-based and idempotent: every trigger (a FineTuneJob, RayJob or export Job event, the periodic
resync) runs the same function, serialised per job by a lock. Child names are deterministic and creation
treats 409 as done, so a reconcile interrupted anywhere (an operator killed mid-launch) is finished by the
next one without a second RayJob.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edgetune_operator.api import FineTuneJobSpec, FineTuneJobStatus, spec_problems
from edgetune_operator.kubeapi import Kube, MissingApiError
from edgetune_operator.metrics import OperatorMetrics
from edgetune_operator.render import (
    ANNOTATION_SUSPENDED_BY,
    CREDENTIAL_KEYS,
    LABEL_COMPONENT,
    LABEL_JOB,
    JobRef,
    OperatorDefaults,
    effective_storage,
    render_config_map,
    render_export_job,
    render_rayjob,
    render_trainer_rbac,
)
from edgetune_operator.status import Decision, ExportJobView, RayJobView, decide, held, parse_time, status_patch

log = logging.getLogger("edgetune.operator")


@dataclass
class Observed:
    """A FineTuneJob and its children as read at the start of one reconcile."""

    job: dict[str, Any]
    spec: FineTuneJobSpec | None
    problems: list[str]
    status: FineTuneJobStatus
    rayjobs: list[RayJobView]
    exports: list[ExportJobView]


class Reconciler:
    def __init__(
        self, kube: Kube, defaults: OperatorDefaults, metrics: OperatorMetrics, namespaces: list[str] | None = None
    ) -> None:
        self.kube = kube
        self.namespaces: list[str] = list(namespaces or [])  # empty: every namespace
        self.defaults = defaults
        self.metrics = metrics
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._written: dict[tuple[str, str], str] = {}  # resourceVersion of each job's last status patch

    @contextmanager
    def _locked(self, namespace: str, name: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault((namespace, name), threading.Lock())
        with lock:
            yield

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone: drop its lock and its phase from the metrics."""
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
            self._written.pop((namespace, name), None)
        self.metrics.jobs.set(namespace, name, None)

    def reconcile(self, namespace: str, name: str, body: dict[str, Any] | None = None) -> Decision | None:
        """Reconcile one job; `body`, when the trigger was the job's own watch event, saves a read."""
        with self._locked(namespace, name):
            if body is not None and body["metadata"].get("resourceVersion") == self._written.get((namespace, name)):
                return None  # the echo of our own status patch: nothing new to look at
            started = time.perf_counter()
            try:
                return self._reconcile(namespace, name, body)
            finally:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def _observe(self, job: dict[str, Any]) -> Observed:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        problems = [str(p) for p in spec_problems(job.get("spec"))]
        spec = None if problems else FineTuneJobSpec.model_validate(job["spec"], by_alias=True, by_name=False)
        if spec is not None and effective_storage(spec.storage, self.defaults.storage).uri is None:
            problems = ["spec.storage.uri: not set, and the operator has no default storage (Helm value storage.uri)"]
            spec = None
        status = FineTuneJobStatus.model_validate(job.get("status") or {})
        selector = f"{LABEL_JOB}={name}"
        rayjobs = [RayJobView.from_object(o) for o in self.kube.list_rayjobs(namespace, selector)]
        exports: list[ExportJobView] = []
        if any(r.outcome == "succeeded" for r in rayjobs):
            export_selector = f"{selector},{LABEL_COMPONENT}=export"
            pods = self.kube.list_pods(namespace, export_selector)
            for export_job in self.kube.list_export_jobs(namespace, export_selector):
                job_name = export_job["metadata"]["name"]
                owned = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == job_name]
                exports.append(ExportJobView.from_objects(export_job, owned))
        return Observed(job, spec, problems, status, rayjobs, exports)

    def _setup_problem(self, observed: Observed) -> str | None:
        """A missing credentials Secret holds the launch (phase Pending) instead of crash-looping pods."""
        if observed.spec is None or observed.rayjobs:
            return None
        secret = effective_storage(observed.spec.storage, self.defaults.storage).credentials_secret
        if secret is None:
            return None
        return self.kube.secret_problem(observed.job["metadata"]["namespace"], secret, CREDENTIAL_KEYS)

    def _reconcile(self, namespace: str, name: str, body: dict[str, Any] | None) -> Decision | None:
        job = body if body is not None else self.kube.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return None
        observed = self._observe(job)
        now = datetime.now(timezone.utc)
        decision = decide(
            name,
            observed.spec,
            observed.problems,
            observed.status,
            job["metadata"].get("generation"),
            observed.rayjobs,
            observed.exports,
            now,
            setup_problem=self._setup_problem(observed),
        )
        try:
            self._act(observed, decision, now)
        except MissingApiError as err:
            log.error("%s/%s: %s", namespace, name, err)
            decision = held(decision, observed.status, "KubeRayMissing", str(err), now)
        patch = status_patch(observed.status, decision.status)
        if patch is not None:
            self._written[(namespace, name)] = self.kube.patch_job_status(namespace, name, patch)
        for event in decision.events:
            self.kube.post_event(job, event.type, event.reason, event.message)
            if event.reason in ("ExportSucceeded", "ExportFailed"):
                self.metrics.exports.labels(result=event.reason.removeprefix("Export").lower()).inc()
        self.metrics.jobs.set(namespace, name, decision.status.phase)
        return decision

    def _act(self, observed: Observed, decision: Decision, now: datetime) -> None:
        meta = observed.job["metadata"]
        ref = JobRef(meta["name"], meta["namespace"], meta["uid"])
        spec = observed.spec
        if decision.delete_rayjob:
            self.kube.delete_rayjob(ref.namespace, decision.delete_rayjob)
        if decision.suspend_rayjob:
            rayjob, suspend = decision.suspend_rayjob
            marker = "edgetune" if suspend else None
            patch = {"metadata": {"annotations": {ANNOTATION_SUSPENDED_BY: marker}}, "spec": {"suspend": suspend}}
            self.kube.patch_rayjob(ref.namespace, rayjob, patch)
        if spec is None:
            return
        if decision.create_attempt is not None:
            self._launch(ref, spec, decision, now, meta)
        if decision.create_exports:
            assert decision.export_attempt is not None
            for target in spec.export:
                if target.name in decision.create_exports:
                    self.kube.create(render_export_job(ref, spec, target, decision.export_attempt, self.defaults))

    def _launch(
        self, ref: JobRef, spec: FineTuneJobSpec, decision: Decision, now: datetime, meta: dict[str, Any]
    ) -> None:
        attempt = decision.create_attempt
        assert attempt is not None
        for obj in render_trainer_rbac(ref):
            self.kube.create(obj)
        self.kube.create(render_config_map(ref, spec, attempt, self.defaults))
        deadline_left = None
        if spec.run_policy.active_deadline_seconds is not None:
            start = parse_time(decision.status.start_time) or now
            elapsed = (now - start).total_seconds()
            deadline_left = int(spec.run_policy.active_deadline_seconds - elapsed)
        if self.kube.create(render_rayjob(ref, spec, attempt, self.defaults, deadline_left)):
            self.metrics.attempts.inc()
            created = parse_time(meta.get("creationTimestamp"))
            if attempt == 1 and created is not None:
                self.metrics.launch_seconds.observe(max(0.0, (datetime.now(timezone.utc) - created).total_seconds()))
            log.info("%s/%s: created RayJob attempt %d", ref.namespace, ref.name, attempt)
