"""One reconcile of one FineTuneJob: read the world, `status.decide()`, carry the decision out.

Level-based and idempotent: every trigger (a FineTuneJob, RayJob or export Job event, the periodic
resync) runs the same function, serialised per job by a lock. Child names are deterministic and creation
treats 409 as done, so a reconcile interrupted anywhere (an operator killed mid-launch) is finished by the
next one without a second RayJob.

Three rules keep a decision from resting on a stale view:
- the children are read before the job, so the spec a decision uses is at least as new as the child
  state it reacts to (a runPolicy edit made before a RayJob failed is always seen when deciding on that
  failure);
- a launch, which cannot be undone, first checks that the job's generation is still the one it decided
  with whenever something was read after the job (the storage Secret, unless one trusted from a launch
  in the last 10 s), since a user may edit the spec in between;
- every write names the job's uid (the status patch as a precondition, children as their owner), so a
  job deleted mid-reconcile, or deleted and created again under the same name, is never written for the
  old one (and a launch waits while RayJobs of an earlier job of the same name remain). Such a reconcile
  ends quietly: a user deleting a job is a normal event, not an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kubernetes.client.exceptions import ApiException

from edgetune_operator.api import FineTuneJobSpec, FineTuneJobStatus, spec_problems
from edgetune_operator.identity import LABEL_COMPONENT, LABEL_JOB
from edgetune_operator.kubeapi import Kube, MissingApiError, namespace_gone
from edgetune_operator.metrics import OperatorMetrics, snapshot
from edgetune_operator.render import (
    ANNOTATION_SUSPENDED_BY,
    CREDENTIAL_KEYS,
    JobRef,
    OperatorDefaults,
    distill_rayjob_name,
    effective_storage,
    rayjob_name,
    render_config_map,
    render_export_job,
    render_job_safeguards,
    render_rayjob,
    render_trainer_rbac,
)
from edgetune_operator.security import render_ray_auth_secret
from edgetune_operator.status import TERMINAL_PHASES, TRAINER_FIELDS, Decision, decide, held, status_patch
from edgetune_operator.views import ExportJobView, RayJobView, parse_time

log = logging.getLogger("edgetune.operator")
SECRET_TRUST_SECONDS = 10.0


def fingerprint(job: Mapping[str, Any]) -> int:
    """A digest of all a reconcile's decision can take from the job itself: its identity, spec generation,
    deletion, and the status fields the operator writes. The trainer's progress reports (TRAINER_FIELDS)
    change none of it, so an event whose job has the fingerprint of the last reconciled one needs no
    reconcile: at a thousand running jobs reporting every 10 s, that is 100 reconciles a second saved."""
    meta = job.get("metadata") or {}
    status = {key: value for key, value in (job.get("status") or {}).items() if key not in TRAINER_FIELDS}
    essence = [meta.get("uid"), meta.get("generation"), meta.get("deletionTimestamp"), status]
    text = json.dumps(essence, sort_keys=True, default=dict)  # kopf hands over mapping views: dict() them
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class StaleViewError(Exception):
    """What this reconcile read is no longer the world (the job changed or went, or children of an earlier
    job of its name are still there): its decision is void, and a later reconcile decides again."""


@dataclass
class Children:
    """A FineTuneJob's RayJobs and export Jobs, as read before the job itself."""

    rayjobs: list[dict[str, Any]]
    export_jobs: list[dict[str, Any]]
    export_pods: list[dict[str, Any]]

    def owned_by(self, uid: str) -> Children:
        """Only what belongs to the job with this uid (its RayJobs and export Jobs, and those Jobs' pods):
        children of a deleted job of the same name are the garbage collector's, not this job's."""
        export_jobs = _owned(self.export_jobs, {uid})
        export_job_uids = {j["metadata"]["uid"] for j in export_jobs}
        return Children(_owned(self.rayjobs, {uid}), export_jobs, _owned(self.export_pods, export_job_uids))

    def foreign_rayjobs(self, uid: str) -> list[str]:
        """RayJobs labelled with this job's name that another job (a deleted one of the same name) owns."""
        mine = {r["metadata"]["uid"] for r in _owned(self.rayjobs, {uid})}
        return [r["metadata"]["name"] for r in self.rayjobs if r["metadata"]["uid"] not in mine]


def _owned(objects: list[dict[str, Any]], owners: set[str]) -> list[dict[str, Any]]:
    return [o for o in objects if any(r.get("uid") in owners for r in o["metadata"].get("ownerReferences") or [])]


@dataclass
class Observed:
    """A FineTuneJob and its children as read at the start of one reconcile."""

    job: dict[str, Any]
    spec: FineTuneJobSpec | None
    problems: list[str]
    status: FineTuneJobStatus
    rayjobs: list[RayJobView]
    exports: list[ExportJobView]
    read_after_job: bool = False  # an API read (the Secret's) came after the job's: see Reconciler._launch


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        defaults: OperatorDefaults,
        metrics: OperatorMetrics,
        namespaces: list[str] | None = None,
        secret_trust_seconds: float = SECRET_TRUST_SECONDS,
    ) -> None:
        self.kube = kube
        self.namespaces: list[str] = list(namespaces or [])  # empty: every namespace
        self.defaults = defaults
        self.metrics = metrics
        # A lock lives while a reconcile holds or waits for it, so a job deleted and created again under the
        # same name while a reconcile of the old one runs still waits for it.
        self._locks: weakref.WeakValueDictionary[tuple[str, str], threading.Lock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        self._usable_secrets: dict[tuple[str, str], float] = {}  # (namespace, Secret) -> trusted until
        self.secret_trust_seconds = secret_trust_seconds
        # A launch's independent writes go out together, at most 32 at a time across all reconciles: with the
        # 32 reconcile workers (handlers.py), within the client's connection pool (main.CONNECTION_POOL_SIZE).
        # Measured in a burst of 500 launches: 8 writers gave 23 launches/s, 16 gave 30, 32 gave 33.
        self._writers = ThreadPoolExecutor(32, thread_name_prefix="edgetune-write")
        # The fingerprint of each job as its last complete reconcile left it (after its own status patch).
        self._reconciled: dict[tuple[str, str], int] = {}

    @contextmanager
    def _locked(self, namespace: str, name: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.get((namespace, name))
            if lock is None:
                lock = self._locks[(namespace, name)] = threading.Lock()
        with lock:
            yield

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone: drop its phase from the metrics, after any reconcile of it still running (which
        would otherwise put the phase back)."""
        with self._locked(namespace, name):
            self.metrics.jobs.set(namespace, name, None)
            self._reconciled.pop((namespace, name), None)

    def is_reconciled(self, job: Mapping[str, Any]) -> bool:
        """Has this job, as given (by a watch event), been reconciled already, up to the trainer's fields?"""
        meta = job.get("metadata") or {}
        return self._reconciled.get((meta.get("namespace"), meta.get("name"))) == fingerprint(job)

    def due_for_resync(
        self, namespace: str | None, sweep: int, interval_s: float
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The unfinished jobs a resync sweep reconciles, as (now, in turn). Now: those whose last reconcile
        did not complete or whose job changed since; those that wait on something no event announces
        (phase Pending: a Secret, the RayJob API); those whose activeDeadlineSeconds passes before the next
        sweep. In turn: a rotating tenth of the rest, so that a missed event is made good within ten
        sweeps. At a thousand running jobs, reconciling all of them every 30 s cost 33 reconciles a second
        for nothing."""
        now, in_turn = [], []
        horizon = datetime.now(timezone.utc).timestamp() + interval_s
        for job in self.kube.iter_jobs(namespace):
            meta, status = job["metadata"], job.get("status") or {}
            if status.get("phase") in TERMINAL_PHASES:
                continue
            deadline = ((job.get("spec") or {}).get("runPolicy") or {}).get("activeDeadlineSeconds")
            started = parse_time(status.get("startTime"))
            turn = int.from_bytes(hashlib.blake2b(meta["uid"].encode(), digest_size=2).digest(), "big") % 10
            key = (meta["namespace"], meta["name"])
            if (
                status.get("phase") in (None, "Pending")
                or (deadline is not None and (started is None or started.timestamp() + deadline <= horizon))
                or not self.is_reconciled(job)
            ):
                now.append(key)
            elif turn == sweep % 10:
                in_turn.append(key)
        return now, in_turn

    def note_progress(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """A progress report alone changed the job: only the step metric moves."""
        step = (status.get("progress") or {}).get("step")
        if isinstance(step, int):
            self.metrics.jobs.update_step(namespace, name, step)

    def reconcile(self, namespace: str, name: str) -> Decision | None:
        """Reconcile one job; None when there is nothing to reconcile (the job is gone or being deleted)."""
        with self._locked(namespace, name):
            started = time.perf_counter()
            self._reconciled.pop((namespace, name), None)  # set again only when this one completes
            try:
                return self._reconcile(namespace, name)
            except Exception:
                self.metrics.reconcile_errors.inc()
                raise
            finally:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def _children(self, namespace: str, name: str) -> Children:
        selector = f"{LABEL_JOB}={name}"
        rayjobs = self.kube.list_rayjobs(namespace, selector)
        if not any(RayJobView.from_object(r).outcome == "succeeded" for r in rayjobs):
            return Children(rayjobs, [], [])
        export_selector = f"{selector},{LABEL_COMPONENT}=export"
        pods = self.kube.list_pods(namespace, export_selector)
        return Children(rayjobs, self.kube.list_export_jobs(namespace, export_selector), pods)

    def _observe(self, job: dict[str, Any], children: Children) -> Observed:
        problems = [str(p) for p in spec_problems(job.get("spec"))]
        spec = None if problems else FineTuneJobSpec.model_validate(job["spec"], by_alias=True, by_name=False)
        if spec is not None and effective_storage(spec.storage, self.defaults.storage).uri is None:
            problems = ["spec.storage.uri: not set, and the operator has no default storage (Helm value storage.uri)"]
            spec = None
        status = FineTuneJobStatus.model_validate(job.get("status") or {})
        rayjobs = [RayJobView.from_object(o) for o in children.rayjobs]
        exports: list[ExportJobView] = []
        for export_job in children.export_jobs:
            job_name = export_job["metadata"]["name"]
            owned = [p for p in children.export_pods if (p["metadata"].get("labels") or {}).get("job-name") == job_name]
            exports.append(ExportJobView.from_objects(export_job, owned))
        return Observed(job, spec, problems, status, rayjobs, exports)

    def _setup_problem(self, observed: Observed) -> str | None:
        """A missing credentials Secret holds the launch (phase Pending) instead of crash-looping pods.

        A Secret found usable is believed for `secret_trust_seconds`: a burst of jobs sharing one Secret
        reads it once, not once per job. A problem is never cached, so a Secret created to fix it is seen
        at the next reconcile."""
        if observed.spec is None or observed.rayjobs:
            return None
        secret = effective_storage(observed.spec.storage, self.defaults.storage).credentials_secret
        if secret is None:
            return None
        key = (observed.job["metadata"]["namespace"], secret)
        if self._usable_secrets.get(key, 0.0) > time.monotonic():
            return None
        observed.read_after_job = True
        problem = self.kube.secret_problem(key[0], secret, CREDENTIAL_KEYS)
        if problem is None:
            self._usable_secrets[key] = time.monotonic() + self.secret_trust_seconds
        return problem

    def _reconcile(self, namespace: str, name: str) -> Decision | None:
        children = self._children(namespace, name)  # first: see the module doc
        job = self.kube.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return None
        try:
            return self._decide_and_act(job, children)
        except StaleViewError as why:
            log.info("%s/%s: not acting: %s; deciding again at the next event or resync", namespace, name, why)
            return None
        except ApiException as err:
            if not namespace_gone(err) and self._still_there(job):
                raise
            log.info("%s/%s was deleted during its reconcile; nothing more to do", namespace, name)
            return None

    def _still_there(self, job: dict[str, Any]) -> bool:
        """Is the job we reconcile still there and not being deleted (the same object: same uid)?"""
        try:
            return self._reread(job["metadata"]) is not None
        except ApiException:
            return True  # cannot tell: let the caller report the original error

    def _reread(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """The job as the API server has it now, or None when it is gone, being deleted, or another job
        (another uid) now has its name."""
        current = self.kube.get_job(meta["namespace"], meta["name"])
        if current is None or current["metadata"]["uid"] != meta["uid"] or current["metadata"].get("deletionTimestamp"):
            return None
        return current

    def _decide_and_act(self, job: dict[str, Any], all_children: Children) -> Decision:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        observed = self._observe(job, all_children.owned_by(meta["uid"]))
        now = datetime.now(timezone.utc)
        decision = decide(
            name,
            observed.spec,
            observed.problems,
            observed.status,
            meta.get("generation"),
            observed.rayjobs,
            observed.exports,
            now,
            setup_problem=self._setup_problem(observed),
        )
        leftovers = all_children.foreign_rayjobs(meta["uid"])
        if decision.create_attempt is not None and leftovers:
            # Children of a deleted job of the same name: creating ours now would collide with them by name
            # (409, taken for "done") while the garbage collector removes them. The resync tries again.
            raise StaleViewError(f"RayJob(s) {', '.join(leftovers)} of an earlier job of this name still exist")
        try:
            self._act(observed, decision, now)
        except MissingApiError as err:
            log.error("%s/%s: %s", namespace, name, err)
            decision = held(decision, observed.status, "KubeRayMissing", str(err), now)
        patch = status_patch(observed.status, decision.status)
        reconciled = job if patch is None else self.kube.patch_job_status(job, patch)
        # Our own status patch comes back as a watch event: nothing in it is news to this decision.
        self._reconciled[(namespace, name)] = fingerprint(reconciled)
        for event in decision.events:
            self.kube.post_event(job, event.type, event.reason, event.message)
            if event.reason in ("ExportSucceeded", "ExportFailed"):
                self.metrics.exports.labels(result=event.reason.removeprefix("Export").lower()).inc()
        self.metrics.jobs.set(namespace, name, snapshot(observed.spec, decision.status))
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
            self._launch(ref, spec, decision, now, meta, observed.read_after_job)
        if decision.create_distill_attempt is not None:
            self._launch_distillation(ref, spec, decision)
        if decision.create_exports:
            assert decision.export_attempt is not None
            for target in spec.export:
                if target.name in decision.create_exports:
                    self.kube.create(render_export_job(ref, spec, target, decision.export_attempt, self.defaults))

    def _confirm_spec(self, meta: dict[str, Any]) -> None:
        """A launch cannot be undone: make it only with the newest spec. The reads after the job's (the
        Secret's) may have taken long enough for the user to edit it; if so, the edit's own event brings
        a reconcile that decides again."""
        current = self._reread(meta)
        if current is None:
            raise StaleViewError("the job went away since it was read")
        if current["metadata"].get("generation") != meta.get("generation"):
            raise StaleViewError(
                f"its spec changed since it was read (generation {meta.get('generation')} -> "
                f"{current['metadata'].get('generation')})"
            )

    def _launch_distillation(self, ref: JobRef, spec: FineTuneJobSpec, decision: Decision) -> None:
        """The distillation's RayJob and its own Ray token; the RBAC, safeguards and ConfigMap it uses are
        the training's, made at its launch and still there (owned by the job)."""
        attempt, trained = decision.create_distill_attempt, decision.distill_config_attempt
        assert attempt is not None and trained is not None
        name = distill_rayjob_name(ref.name, attempt)
        self.kube.create(render_ray_auth_secret(ref, name, attempt, secrets.token_urlsafe(32)))
        if self.kube.create(render_rayjob(ref, spec, attempt, self.defaults, distill_of=trained)):
            self.metrics.attempts.inc()  # edgetune_attempts_total counts every RayJob started, distillations too
            log.info("%s/%s: created distillation RayJob attempt %d", ref.namespace, ref.name, attempt)

    def _launch(
        self,
        ref: JobRef,
        spec: FineTuneJobSpec,
        decision: Decision,
        now: datetime,
        meta: dict[str, Any],
        read_after_job: bool,
    ) -> None:
        attempt = decision.create_attempt
        assert attempt is not None
        if read_after_job:  # else the spec is as fresh as for any decision: the job was the last read
            self._confirm_spec(meta)
        # A new token per attempt; a relaunch after a crash finds the first one (409) and keeps it.
        token = secrets.token_urlsafe(32)
        prerequisites = [
            *render_trainer_rbac(ref),
            *render_job_safeguards(ref, spec, self.defaults),
            render_config_map(ref, spec, attempt, self.defaults),
            render_ray_auth_secret(ref, rayjob_name(ref.name, attempt), attempt, token),
        ]
        # Written at once, not one after another (a launch waited on nine round trips in a row), in two waves:
        # the API server checks a RoleBinding against its Role (404 while the Role is missing), so the
        # RoleBinding goes with the RayJob. It is needed only by the head's first status report, seconds
        # after KubeRay has made the head pod. Everything the pods mount or are guarded by goes first.
        first = [obj for obj in prerequisites if obj["kind"] != "RoleBinding"]
        list(self._writers.map(self.kube.create, first))  # the first error is raised here
        bindings = [self._writers.submit(self.kube.create, obj) for obj in prerequisites if obj not in first]
        deadline_left = None
        if spec.run_policy.active_deadline_seconds is not None:
            start = parse_time(decision.status.start_time) or now
            elapsed = (now - start).total_seconds()
            deadline_left = int(spec.run_policy.active_deadline_seconds - elapsed)
        created_rayjob = self.kube.create(render_rayjob(ref, spec, attempt, self.defaults, deadline_left))
        for binding in bindings:
            binding.result()
        if created_rayjob:
            self.metrics.attempts.inc()
            created = parse_time(meta.get("creationTimestamp"))
            if attempt == 1 and created is not None:
                self.metrics.launch_seconds.observe(max(0.0, (datetime.now(timezone.utc) - created).total_seconds()))
            log.info("%s/%s: created RayJob attempt %d", ref.namespace, ref.name, attempt)
