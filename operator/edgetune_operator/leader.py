"""Leader election on a coordination.k8s.io Lease, so that several operator replicas run one at a time.

The convention of Kubernetes controllers (controller-runtime, kube-controller-manager): a replica holds
the Lease while it renews it; the others wait and take it over once it has not changed for
`lease_seconds`, timed on the follower's own monotonic clock from the moment it last saw the Lease change
(as client-go does, so clock skew between nodes does not matter). A leader that cannot renew within
`renew_deadline_seconds` exits, and its pod restarts as a follower. Writes carry the resourceVersion they
read, so two candidates racing for an expired Lease cannot both win (the loser gets 409 Conflict).

Why not kopf's peering: kopf pauses *every* operator that sees a live peer of equal priority, and it has
no say over our resync thread; a Lease needs no extra CRD either.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes.client
from kubernetes.client.rest import ApiException

log = logging.getLogger("edgetune.leader")


class LeaseForbiddenError(RuntimeError):
    """The ServiceAccount may not use the Lease: a missing Role, which no amount of retrying fixes."""


def _check_allowed(err: ApiException, verb: str, namespace: str, name: str) -> None:
    if err.status == 403:
        raise LeaseForbiddenError(
            f"may not {verb} Lease {namespace}/{name} (403 Forbidden): leader election needs a Role with "
            f"create, get, update on coordination.k8s.io leases there (the chart adds it when replicaCount > 1)"
        ) from err


@dataclass(frozen=True)
class LeaseTiming:
    lease_seconds: int = 15  # a follower takes over a Lease not renewed for this long
    renew_deadline_seconds: float = 10.0  # a leader that could not renew for this long gives up
    retry_seconds: float = 2.0  # how often followers retry and leaders renew

    def __post_init__(self) -> None:
        if not self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError("need retry_seconds < renew_deadline_seconds < lease_seconds")


class LeaseElector:
    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
    ) -> None:
        self.coordination = kubernetes.client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        # The Lease record last seen and when (monotonic): it expires when it has not changed for its duration.
        self._seen: tuple[Any, ...] | None = None
        self._seen_at = 0.0

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this replica holds the Lease afterwards."""
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
        except ApiException as err:
            _check_allowed(err, "get", self.namespace, self.name)
            if err.status != 404:
                log.warning("reading Lease %s/%s failed: %s %s", self.namespace, self.name, err.status, err.reason)
                return False
            return self._create(now)
        spec = lease.spec
        holder = spec.holder_identity if spec else None
        if holder and holder != self.identity and not self._expired(spec):
            return False
        taking_over = holder != self.identity
        body = {
            "metadata": {"name": self.name, "resourceVersion": lease.metadata.resource_version},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.timing.lease_seconds,
                "renewTime": now,
                "acquireTime": now if taking_over else (spec.acquire_time or now),
                "leaseTransitions": (spec.lease_transitions or 0) + (1 if taking_over and holder else 0),
            },
        }
        try:
            self.coordination.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as err:
            _check_allowed(err, "update", self.namespace, self.name)
            if err.status != 409:  # 409: another candidate wrote first
                log.warning("writing Lease %s/%s failed: %s %s", self.namespace, self.name, err.status, err.reason)
            return False
        if taking_over:
            log.info("took over Lease %s/%s from %s", self.namespace, self.name, holder or "nobody")
        return True

    def _expired(self, spec: kubernetes.client.V1LeaseSpec) -> bool:
        record = (spec.holder_identity, spec.renew_time, spec.lease_transitions)
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
            return False
        duration = spec.lease_duration_seconds or self.timing.lease_seconds
        return time.monotonic() - self._seen_at > duration

    def _create(self, now: datetime.datetime) -> bool:
        body = {
            "metadata": {"name": self.name},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.timing.lease_seconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            self.coordination.create_namespaced_lease(self.namespace, body)
        except ApiException as err:
            _check_allowed(err, "create", self.namespace, self.name)
            if err.status != 409:
                log.warning("creating Lease %s/%s failed: %s %s", self.namespace, self.name, err.status, err.reason)
            return False
        log.info("created Lease %s/%s", self.namespace, self.name)
        return True

    def wait_for_leadership(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or `stop` is set (False)."""
        log.info("waiting for Lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    return True
            except LeaseForbiddenError:
                raise
            except Exception as err:  # the API server unreachable: keep waiting, as a follower would
                log.warning("reading Lease %s/%s failed: %s", self.namespace, self.name, err)
            stop.wait(self.timing.retry_seconds)
        return False

    def keep_renewing(self, stop: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a daemon thread; call `on_lost` once renewing has failed for the renew deadline."""

        def renew() -> None:
            last_renewed = time.monotonic()
            while not stop.wait(self.timing.retry_seconds):
                try:
                    renewed = self.try_acquire_or_renew()
                except LeaseForbiddenError as err:  # the Role was taken away: no renewal will work again
                    log.error("%s", err)
                    on_lost()
                    return
                except Exception as err:  # the API server unreachable (urllib3 errors are no ApiException)
                    log.warning("renewing Lease %s/%s failed: %s", self.namespace, self.name, err)
                    renewed = False
                if renewed:
                    last_renewed = time.monotonic()
                elif time.monotonic() - last_renewed > self.timing.renew_deadline_seconds:
                    log.error("lost Lease %s/%s: not renewed for %.0f s", self.namespace, self.name,
                              time.monotonic() - last_renewed)  # fmt: skip
                    on_lost()
                    return

        thread = threading.Thread(target=renew, name="lease-renewer", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """On a clean exit, let a follower take over at once instead of after `lease_seconds`. Call it after
        the renewer has stopped (`keep_renewing`'s thread joined), or a last renewal could undo it."""
        for _ in range(5):  # a conflict means the Lease changed under us: read it again and retry
            try:
                lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
                if not lease.spec or lease.spec.holder_identity != self.identity:
                    return
                body = {"metadata": {"resourceVersion": lease.metadata.resource_version},
                        "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None}}  # fmt: skip
                self.coordination.patch_namespaced_lease(self.name, self.namespace, body)
                return
            except ApiException as err:
                if err.status != 409:
                    log.warning("releasing Lease %s/%s failed: %s %s", self.namespace, self.name, err.status,
                                err.reason)  # fmt: skip
                    return
        log.warning("releasing Lease %s/%s failed: it kept changing", self.namespace, self.name)
