"""An in-process operator for control-plane tests that must choose the moment things happen.

`InterleavedKube` is the operator's own `Kube`, numbering its API calls; `interleave(k, action)` runs
`action` once, right after call k of a reconcile returns, as another client acting between two of the
operator's calls would. `in_process_reconciler` builds a Reconciler over it, as `edgetune-operator` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes.client

from edgetune_operator.kubeapi import Kube
from edgetune_operator.metrics import OperatorMetrics
from edgetune_operator.reconciler import Reconciler
from edgetune_operator.render import OperatorDefaults

# Every call of Kube that reads or writes the API server inside a reconcile (events are posted later, by a
# thread of their own).
API_CALLS = (
    "list_rayjobs", "list_export_jobs", "list_pods", "get_job", "secret_problem",
    "create", "patch_rayjob", "delete_rayjob", "patch_job_status",
)  # fmt: skip


class InterleavedKube(Kube):
    """The operator's Kube, numbering its API calls; see the module doc."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        super().__init__(client)
        self.calls: list[str] = []
        self._after = 0
        self._action: Callable[[], None] | None = None

    def interleave(self, after: int, action: Callable[[], None] | None) -> None:
        self.calls = []
        self._after, self._action = after, action

    def _called(self, name: str) -> None:
        self.calls.append(name)
        if self._action is not None and len(self.calls) == self._after:
            action, self._action = self._action, None
            action()


def _numbered(name: str) -> Callable[..., Any]:
    def call(self: InterleavedKube, *args: Any, **kwargs: Any) -> Any:
        result = getattr(Kube, name)(self, *args, **kwargs)
        self._called(name)
        return result

    return call


for _name in API_CALLS:
    setattr(InterleavedKube, _name, _numbered(_name))


def in_process_reconciler(
    api: kubernetes.client.ApiClient, namespace: str, secret_trust_seconds: float = 0.0
) -> Reconciler:
    """A Reconciler as `edgetune-operator` builds it, over an InterleavedKube on `api`. It reads the storage
    Secret at every launch unless `secret_trust_seconds` says otherwise: the races run each launch's every
    call in turn, and a Secret trusted from the previous job's launch would leave two of them out."""
    defaults = OperatorDefaults(trainer_image="registry.test/edgetune-trainer:0.1.0")
    return Reconciler(InterleavedKube(api), defaults, OperatorMetrics(), [namespace], secret_trust_seconds)


def kube_of(reconciler: Reconciler) -> InterleavedKube:
    assert isinstance(reconciler.kube, InterleavedKube)
    return reconciler.kube


def calls_of_one_reconcile(reconciler: Reconciler, namespace: str, name: str) -> list[str]:
    """The API calls one undisturbed reconcile of job `name` makes, in order."""
    kube = kube_of(reconciler)
    kube.interleave(0, None)
    reconciler.reconcile(namespace, name)
    return list(kube.calls)
