"""kopf handlers: thin triggers for `Reconciler.reconcile` (all logic lives in status.py and render.py).
Each adds the job's key to the work queue (workqueue.py) and returns: kopf holds an event's body until its
handler returns, so the reconciles run on the queue's threads, not on kopf's.

Only watching handlers (`on.event`) and a resync thread are used, on purpose: kopf's change-detecting
handlers, timers and daemons would store state on the FineTuneJob (annotations, a finalizer), and nothing
here needs it: the children and the status are the state. So deleting a job never waits on the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf
import kubernetes.client

from edgetune_operator.api import GROUP, PLURAL, VERSION
from edgetune_operator.identity import LABEL_COMPONENT, LABEL_JOB
from edgetune_operator.memory import release_free_memory
from edgetune_operator.reconciler import Reconciler
from edgetune_operator.workqueue import WorkQueue

log = logging.getLogger("edgetune.operator")


RECONCILE_WORKERS = 32  # reconciles wait on the API server, not on the CPU (bench/bench_operator.py)


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, resync_seconds: float) -> threading.Event:
    """Add the handlers to `registry`; returns the event that stops the resync thread (kopf's cleanup stops
    the reconcile workers)."""
    stop = threading.Event()
    queue = WorkQueue(reconciler.reconcile, RECONCILE_WORKERS)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def finetunejob_changed(type: str | None, namespace: str, name: str, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            reconciler.forget(namespace, name)
        elif reconciler.is_reconciled(body):  # only the trainer's progress changed: see reconciler.fingerprint
            reconciler.note_progress(namespace, name, body.get("status") or {})
        else:
            queue.add(namespace, name)

    @kopf.on.event("ray.io", "v1", "rayjobs", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    def rayjob_changed(namespace: str, labels: dict[str, str], status: kopf.Status, **_: Any) -> None:
        if status:  # a RayJob without status is one we just created: nothing to mirror yet
            queue.add(namespace, labels[LABEL_JOB])

    @kopf.on.event(
        "batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT, LABEL_COMPONENT: "export"}, registry=registry
    )
    def export_job_changed(namespace: str, labels: dict[str, str], **_: Any) -> None:
        queue.add(namespace, labels[LABEL_JOB])

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(reconciler.kube.client.configuration)

    @kopf.on.startup(registry=registry)
    def start_resync(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # events are ours (kubeapi.post_event), kopf's would be noise
        settings.persistence.finalizer = "edgetune.dev/unused"  # never added: no handler asks for one
        settings.watching.server_timeout = 300
        settings.execution.max_workers = 4  # the handlers only queue keys (and forget deleted jobs)
        # kopf keeps a worker, holding the object's last body (about 70 KB decoded), for this long after each
        # event; at 5 s (kopf's default) and progress every 10 s, half of all running jobs had one.
        settings.queueing.idle_timeout = 1.0
        # No cluster-wide scanning of CRDs and namespaces: the watched resources and namespaces are known,
        # and scanning would need cluster-scope list rights that a namespaced install does not have.
        settings.scanning.disabled = True
        queue.start()
        threading.Thread(target=_resync_loop, args=(reconciler, queue, resync_seconds, stop), daemon=True).start()

    @kopf.on.cleanup(registry=registry)
    def stop_resync(**_: Any) -> None:
        stop.set()
        queue.stop()

    @kopf.on.probe(id="reconciled_jobs", registry=registry)
    def jobs_known(**_: Any) -> int:
        return sum(reconciler.metrics.jobs.counts().values())

    return stop


def connection_info(config: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """kopf logs in with exactly the credentials of the operator's kubernetes client (one identity,
    one source: --kubeconfig or the pod's ServiceAccount, whose token the client re-reads on refresh)."""
    authorization = (config.get_api_key_with_prefix("BearerToken", alias="authorization") or "").strip()
    # "Bearer <token>" from a kubeconfig, but "bearer <token>" from the in-cluster loader (found on kind:
    # kopf sent "Bearer bearer ..." and got 401): the scheme is case-insensitive (RFC 7235).
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        token = authorization
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        token=token.strip() or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


def _resync_loop(reconciler: Reconciler, queue: WorkQueue, interval: float, stop: threading.Event) -> None:
    """Every `interval`, queue the unfinished jobs that are due (`Reconciler.due_for_resync`): at once the
    waiting ones, near deadlines and failed reconciles; then, spread over half the interval, a tenth of the
    rest in turn, so each job is reconciled in full at least every ten intervals (missed events). Queued at
    once, that tenth (a hundred jobs at a thousand) held new jobs back by a second."""
    sweep = 0
    next_sweep = time.monotonic() + interval
    while not stop.wait(max(0.0, next_sweep - time.monotonic())):
        next_sweep += interval
        for namespace in reconciler.namespaces or [None]:
            try:
                now, in_turn = reconciler.due_for_resync(namespace, sweep, interval)
            except Exception:
                log.exception("resync: listing FineTuneJobs failed")
                continue
            for job_namespace, name in now:
                queue.add(job_namespace, name, background=True)
            gap = interval / 2 / max(1, len(in_turn) * len(reconciler.namespaces or [None]))
            for job_namespace, name in in_turn:
                queue.add(job_namespace, name, background=True)
                if stop.wait(gap):
                    return
        sweep += 1
        release_free_memory()  # what a burst of launches freed goes back to the system: see memory.py
