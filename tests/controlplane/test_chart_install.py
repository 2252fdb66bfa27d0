"""The Helm chart against the real API server: every render validates server-side (with the Prometheus
Operator's real CRDs), `helm install` and `helm uninstall` work, the chart's identity has exactly the
rights it needs and no others, and replicas elect one leader through a Lease.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from ftjcluster import Cluster, can, eventually, job_document
from helmtool import CHART, REPO_ROOT, run, set_args, template, tool
from kubeenv import ControlPlane, ignore_not_found, unique_name
from kubernetes.client.rest import ApiException
from operatorproc import LEASE_NAME, OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, OperatorProcess, grant_operator

from edgetune_operator.rbac import operator_rules

pytestmark = pytest.mark.controlplane

MONITORING_CRDS = sorted((REPO_ROOT / "tests" / "fixtures" / "prometheus-operator" / "v0.85.0").glob("*.yaml"))
MONITORING_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)


@pytest.fixture(scope="module")
def monitoring_crds(control_plane: ControlPlane) -> None:
    control_plane.install_crds(MONITORING_CRDS)


@pytest.fixture
def other_namespace(kube_api: kubernetes.client.ApiClient) -> Iterator[str]:
    core = kubernetes.client.CoreV1Api(kube_api)
    name = unique_name("other")
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        ignore_not_found(lambda: core.delete_namespace(name))


def helm(plane: ControlPlane, *args: str, check: bool = True) -> Any:
    return run([tool("helm"), "--kubeconfig", str(plane.kubeconfig), *args], check=check)


def server_dry_run(plane: ControlPlane, documents: list[dict[str, Any]]) -> str:
    command = [tool("kubectl"), "--kubeconfig", str(plane.kubeconfig), "create", "--dry-run=server", "-o", "name"]
    return run([*command, "-f", "-"], stdin=yaml.safe_dump_all(documents)).stdout


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"replicaCount": 2, "minio": {"enabled": True}, "verbose": True, "resyncSeconds": 10},
        {"watch": {"allNamespaces": True}, "storage": {"uri": "s3://ml-data/ckpt", "credentialsSecret": "s3"}},
    ],
    ids=["defaults", "replicas-minio", "all-namespaces"],
)
def test_every_render_validates_on_the_api_server(
    control_plane: ControlPlane, monitoring_crds: None, namespace: str, other_namespace: str, values: dict[str, Any]
) -> None:
    if not values.get("watch"):
        values = {**values, "watch": {"namespaces": [namespace, other_namespace]}}
    documents = template(values, namespace=namespace, api_versions=MONITORING_APIS)
    created = server_dry_run(control_plane, documents).split()
    assert len(created) == len(documents)
    rendered = {d["kind"] for d in documents}
    assert {
        "Deployment",
        "ServiceAccount",
        "Service",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    } <= rendered
    assert ("ClusterRole" in rendered) == bool(values["watch"].get("allNamespaces"))


def test_helm_install_and_uninstall(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, namespace: str
) -> None:
    # minio.enabled runs the bucket hook Job (KWOK completes it); install waits for it, as on a real cluster.
    values = {"minio": {"enabled": True}, "replicaCount": 2}
    result = helm(control_plane, "install", "edgetune", str(CHART), "-n", namespace, *set_args(values), "--timeout=2m")
    assert "STATUS: deployed" in result.stdout
    assert "KubeRayMissing" not in result.stdout  # the session's control plane has KubeRay's CRDs
    assert "s3://edgetune/jobs" in result.stdout
    apps = kubernetes.client.AppsV1Api(kube_api)
    deployment = apps.read_namespaced_deployment("edgetune-operator", namespace)
    assert deployment.spec.replicas == 2
    core = kubernetes.client.CoreV1Api(kube_api)
    assert core.read_namespaced_secret("edgetune-minio", namespace).data["AWS_SECRET_ACCESS_KEY"]
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api)
    assert [r.to_dict()["resources"] for r in rbac.read_namespaced_role("edgetune-operator", namespace).rules] == [
        r["resources"] for r in operator_rules()
    ]
    password = core.read_namespaced_secret("edgetune-minio", namespace).data["AWS_SECRET_ACCESS_KEY"]
    upgrade = helm(control_plane, "upgrade", "edgetune", str(CHART), "-n", namespace, *set_args(values))
    assert "STATUS: deployed" in upgrade.stdout
    # The generated MinIO password survives upgrades (lookup), or MinIO and the jobs would disagree.
    assert core.read_namespaced_secret("edgetune-minio", namespace).data["AWS_SECRET_ACCESS_KEY"] == password
    helm(control_plane, "uninstall", "edgetune", "-n", namespace, "--wait", "--timeout=1m")
    with pytest.raises(ApiException) as gone:
        apps.read_namespaced_deployment("edgetune-operator", namespace)
    assert gone.value.status == 404


def operator_can(api: kubernetes.client.ApiClient, verb: str, group: str, resource: str, namespace: str = "") -> bool:
    return can(api, f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}", verb, group, resource, namespace)


def test_the_chart_identity_can_do_its_job_and_no_more(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, namespace: str, other_namespace: str
) -> None:
    grant_operator(control_plane, namespace)
    checked = 0
    for rule in operator_rules():
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert operator_can(kube_api, verb, group, resource, namespace), f"{verb} {group}/{resource}"
                    assert not operator_can(kube_api, verb, group, resource, other_namespace), (
                        f"{verb} {resource} outside"
                    )
                    checked += 1
    print(f"{checked} allowed (verb, resource) pairs checked in the watched namespace, denied outside it")
    # Secrets: `get` by name (the storage Secret's check) and `create` (each attempt's Ray token), only in the
    # watched namespace; never list, watch, change or delete them.
    assert operator_can(kube_api, "get", "", "secrets", namespace)
    assert operator_can(kube_api, "create", "", "secrets", namespace)
    for verb in ("list", "watch", "update", "patch", "delete"):
        assert not operator_can(kube_api, verb, "", "secrets", namespace)
    assert not operator_can(kube_api, "get", "", "secrets", other_namespace)
    assert not operator_can(
        kube_api, "update", "edgetune.dev", "finetunejobs", namespace
    )  # status only, never the spec
    assert not operator_can(kube_api, "delete", "edgetune.dev", "finetunejobs", namespace)
    for verb, group, resource in [
        ("list", "", "namespaces"),
        ("list", "", "nodes"),
        ("get", "", "secrets"),
        ("create", "", "pods"),
        ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "rbac.authorization.k8s.io", "clusterroles"),
    ]:
        assert not operator_can(kube_api, verb, group, resource), f"cluster-wide {verb} {group}/{resource}"


def lease_holder(kube_api: kubernetes.client.ApiClient) -> str:
    try:
        lease = kubernetes.client.CoordinationV1Api(kube_api).read_namespaced_lease(LEASE_NAME, OPERATOR_NAMESPACE)
    except ApiException as err:
        if err.status == 404:
            return ""
        raise
    return lease.spec.holder_identity or ""


def test_replicas_elect_one_leader_and_the_follower_takes_over(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, cluster: Cluster, tmp_path: Path
) -> None:
    grant_operator(control_plane, cluster.namespace, {"replicaCount": 2})
    cluster.create_secret()
    election = (
        "--leader-elect",
        "--leader-election-namespace",
        OPERATOR_NAMESPACE,
        "--leader-election-name",
        LEASE_NAME,
    )
    replicas = {
        pod: OperatorProcess(control_plane, cluster.namespace, tmp_path, *election, env={"POD_NAME": pod})
        for pod in ("replica-a", "replica-b")
    }
    try:
        for replica in replicas.values():
            replica.start()  # both answer /healthz: the follower must not be restarted by its liveness probe
        leader_pod = eventually("a Lease holder", lambda: lease_holder(kube_api).split("_")[0])
        follower_pod = next(pod for pod in replicas if pod != leader_pod)
        cluster.apply(job_document("first"))
        eventually("RayJob first-a1", lambda: cluster.rayjobs("first"))
        assert "waiting for Lease" in replicas[follower_pod].log_text()
        assert "first" not in replicas[follower_pod].log_text()  # the follower reconciled nothing

        killed_at = time.monotonic()
        assert replicas[leader_pod].process is not None
        replicas[leader_pod].process.send_signal(signal.SIGKILL)
        eventually("the follower holds the Lease", lambda: lease_holder(kube_api).startswith(follower_pod), 40)
        takeover_s = time.monotonic() - killed_at
        cluster.apply(job_document("second"))
        eventually("RayJob second-a1 from the new leader", lambda: cluster.rayjobs("second"))
        assert [r["metadata"]["name"] for r in cluster.rayjobs("first")] == ["first-a1"]
        print(f"leader SIGKILLed -> follower leads after {takeover_s:.1f} s (Lease duration 15 s)")
        assert takeover_s < 15 + 2 * 2 + 5  # the lease, two retry periods, slack for a loaded machine

        replicas[follower_pod].stop()  # SIGTERM: a clean exit releases the Lease for the next replica
        assert lease_holder(kube_api) == ""
    finally:
        for replica in replicas.values():
            replica.stop()
    logs = "\n".join(replica.log_text() for replica in replicas.values())
    assert "Forbidden" not in logs and "Traceback" not in logs, logs[-4000:]


def test_leader_election_without_its_role_exits_with_a_clear_message(
    control_plane: ControlPlane, cluster: Cluster, tmp_path: Path
) -> None:
    grant_operator(control_plane, cluster.namespace)  # replicaCount 1: no Lease Role
    election = ("--leader-elect", "--leader-election-namespace", OPERATOR_NAMESPACE, "--leader-election-name", "nope")
    replica = OperatorProcess(control_plane, cluster.namespace, tmp_path, *election, env={"POD_NAME": "lonely"})
    replica.start(wait=False)
    assert replica.process is not None
    assert replica.process.wait(30) == 1
    assert "may not get Lease edgetune-system/nope (403 Forbidden)" in replica.log_text()
    assert "Traceback" not in replica.log_text()
