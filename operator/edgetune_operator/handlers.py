"""kopf handlers: thin triggers for `Reconciler.reconcile` (all logic lives in status.py and render.py).

Only watching handlers (`on.event`) and a resync thread are used, on purpose: kopf's change-detecting
handlers, timers and daemons would store state on the FineTuneJob (annotations, a finalizer), and nothing
here needs it: the children and the status are the state. So deleting a job never waits on the operator.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf
import kubernetes.client

from edgetune_operator.api import GROUP, PLURAL, VERSION
from edgetune_operator.identity import LABEL_COMPONENT, LABEL_JOB
from edgetune_operator.reconciler import Reconciler
from edgetune_operator.status import TERMINAL_PHASES

log = logging.getLogger("edgetune.operator")


def _safely(reconciler: Reconciler, namespace: str, name: str) -> None:
    """Reconcile; an error is logged and left to the next event or the resync to retry."""
    try:
        reconciler.reconcile(namespace, name)
    except Exception:
        log.exception("reconcile of %s/%s failed; it is retried at the next event or resync", namespace, name)


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, resync_seconds: float) -> threading.Event:
    """Add the handlers to `registry`; returns the event that stops the resync thread."""
    stop = threading.Event()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def finetunejob_changed(type: str | None, namespace: str, name: str, **_: Any) -> None:
        if type == "DELETED":
            reconciler.forget(namespace, name)
        else:
            _safely(reconciler, namespace, name)

    @kopf.on.event("ray.io", "v1", "rayjobs", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    def rayjob_changed(namespace: str, labels: dict[str, str], status: kopf.Status, **_: Any) -> None:
        if status:  # a RayJob without status is one we just created: nothing to mirror yet
            _safely(reconciler, namespace, labels[LABEL_JOB])

    @kopf.on.event(
        "batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT, LABEL_COMPONENT: "export"}, registry=registry
    )
    def export_job_changed(namespace: str, labels: dict[str, str], **_: Any) -> None:
        _safely(reconciler, namespace, labels[LABEL_JOB])

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(reconciler.kube.client.configuration)

    @kopf.on.startup(registry=registry)
    def start_resync(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # events are ours (kubeapi.post_event), kopf's would be noise
        settings.persistence.finalizer = "edgetune.dev/unused"  # never added: no handler asks for one
        settings.watching.server_timeout = 300
        settings.execution.max_workers = 16  # reconciles wait on the API server, not on the CPU
        # No cluster-wide scanning of CRDs and namespaces: the watched resources and namespaces are known,
        # and scanning would need cluster-scope list rights that a namespaced install does not have.
        settings.scanning.disabled = True
        threading.Thread(target=_resync_loop, args=(reconciler, resync_seconds, stop), daemon=True).start()

    @kopf.on.cleanup(registry=registry)
    def stop_resync(**_: Any) -> None:
        stop.set()

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


def _resync_loop(reconciler: Reconciler, interval: float, stop: threading.Event) -> None:
    """Every `interval`, reconcile each unfinished job: deadlines, missed events, failed API calls."""
    while not stop.wait(interval):
        for namespace in reconciler.namespaces or [None]:
            try:
                jobs = reconciler.kube.list_jobs(namespace)
            except Exception:
                log.exception("resync: listing FineTuneJobs failed")
                continue
            for job in jobs:
                if (job.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                    _safely(reconciler, job["metadata"]["namespace"], job["metadata"]["name"])
