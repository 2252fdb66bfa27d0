"""Fixtures of the control-plane tier: a real kube-apiserver + etcd, with
kube-controller-manager, kube-scheduler and KWOK fake nodes (tests/kubeenv.py).

Skip-free on purpose: when the binaries are missing the tests fail with the command
that builds them (`hack/build-k8s.sh`); CI runs that script first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest
from ftjcluster import Cluster
from inprocess import in_process_reconciler
from kubeenv import REPO_ROOT, ControlPlane, ControlPlaneError, ignore_not_found, unique_name
from operatorproc import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, OperatorProcess, grant_operator, running_operator

from edgetune_operator.reconciler import Reconciler

FORBIDDEN = re.compile(r"Forbidden|\(403\)|'code': 403|status[=: ]+403")
KUBERAY_CRDS = REPO_ROOT / "tests" / "fixtures" / "kuberay" / "v1.7.0"
CRD_PATHS: list[Path] = [
    REPO_ROOT / "crds" / "finetunejobs.edgetune.dev.yaml",
    KUBERAY_CRDS / "ray.io_rayjobs.yaml",
    KUBERAY_CRDS / "ray.io_rayclusters.yaml",
]


@pytest.fixture(scope="package")
def control_plane() -> Iterator[ControlPlane]:
    """One control plane for this tier (starting one takes seconds). Package scope: it stops when the
    tier ends, so that its idle API server, etcd and controllers (4 CPU-seconds a minute) do not run on through
    the kind, run and trainer tiers that follow on the same 2 cores."""
    missing = [str(p.relative_to(REPO_ROOT)) for p in CRD_PATHS if not p.exists()]
    if missing:
        pytest.fail(f"CRD files missing: {', '.join(missing)}", pytrace=False)
    plane = ControlPlane(crd_paths=CRD_PATHS)
    error = ""
    try:
        plane.start()
    except ControlPlaneError as exc:
        error = str(exc)
    if error:  # failed outside the except block: no chained traceback around the message
        pytest.fail(error, pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="package")
def kube_api(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """An ApiClient acting as the cluster admin."""
    with control_plane.api_client() as client:
        yield client


@pytest.fixture
def namespace(control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for it to go)."""
    core = kubernetes.client.CoreV1Api(kube_api)
    name = unique_name("t")
    core.create_namespace({"metadata": {"name": name}})
    # Pods are rejected by the ServiceAccount admission plugin until the
    # controller-manager has created the namespace's "default" ServiceAccount.
    control_plane.wait_for(
        f"ServiceAccount {name}/default",
        lambda: core.read_namespaced_service_account("default", name) is not None,
    )
    try:
        yield name
    finally:
        ignore_not_found(lambda: core.delete_namespace(name))


@pytest.fixture
def cluster(kube_api: kubernetes.client.ApiClient, namespace: str) -> Cluster:
    return Cluster(kube_api, namespace)


def checked_operator(plane: ControlPlane, namespace: str, log_dir: Path, *extra: str) -> Iterator[OperatorProcess]:
    """An operator with the chart's identity; afterwards its log must show no denial and no traceback."""
    with running_operator(plane, namespace, log_dir, *extra) as process:
        yield process
    log = process.log_text()
    # A denial shows as "Forbidden" (kopf, the API's reason) or "(403)" (the kubernetes client); a bare
    # "403" would also match timestamps and ports.
    assert not FORBIDDEN.search(log), "the chart's rules were not enough:\n" + log[-3000:]
    assert "Traceback" not in log, log[-5000:]


@pytest.fixture
def operator(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from checked_operator(control_plane, namespace, tmp_path)


@pytest.fixture
def operator_without_resync(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """For tests that count reconciles: a resync sweep (every 3 s in `operator`) would add its own."""
    yield from checked_operator(control_plane, namespace, tmp_path, "--resync-seconds", "3600")


@pytest.fixture
def reconciler(control_plane: ControlPlane, namespace: str) -> Iterator[Reconciler]:
    """The operator's Reconciler in-process (tests/inprocess.py), with the chart's ServiceAccount identity."""
    grant_operator(control_plane, namespace)
    with control_plane.service_account_client(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, create=False) as api:
        yield in_process_reconciler(api, namespace)
