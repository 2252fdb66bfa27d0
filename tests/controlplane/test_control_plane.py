"""Smoke tests of the test control plane itself: the real API server semantics the
operator tests rely on (CRDs, status subresource, watches, optimistic concurrency,
RBAC, KubeRay's schema, garbage collection) and KWOK scheduling and Job completion."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes.client
import kubernetes.config
import pytest
from kubeenv import EDGE_LABEL, GPU_RESOURCE, ControlPlane, unique_name
from kubernetes import watch
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.controlplane

GROUP, VERSION, PLURAL = "edgetune.dev", "v1alpha1", "finetunejobs"
MINIMAL_SPEC: dict[str, Any] = {
    "model": {"source": "hf://prajjwal1/bert-tiny", "task": "text-classification", "numLabels": 2},
    "dataset": {"source": "s3://data/train.jsonl"},
    "storage": {"uri": "s3://bucket/prefix"},
}
BUSYBOX = "busybox:1.36"  # never pulled: KWOK nodes only pretend to run containers


def _ftj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": copy.deepcopy(MINIMAL_SPEC),
    }


@pytest.fixture
def custom(kube_api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube_api)


@pytest.fixture
def core(kube_api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube_api)


def _create_ftj(custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str = "") -> dict[str, Any]:
    body = _ftj(name or unique_name("ftj"))
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


# --------------------------------------------------------------------------- API semantics


def test_crds_are_established(kube_api: kubernetes.client.ApiClient) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(kube_api)
    for name in ("finetunejobs.edgetune.dev", "rayjobs.ray.io", "rayclusters.ray.io"):
        crd = json.loads(ext.read_custom_resource_definition(name, _preload_content=False).data)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", (name, conditions)


def test_finetunejob_create_and_get(custom: kubernetes.client.CustomObjectsApi, namespace: str) -> None:
    created = _create_ftj(custom, namespace)
    name = created["metadata"]["name"]
    got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert got["metadata"]["uid"] == created["metadata"]["uid"]
    assert got["spec"]["model"]["source"] == MINIMAL_SPEC["model"]["source"]
    assert got["metadata"]["generation"] == 1


def test_status_only_changes_through_the_status_subresource(
    custom: kubernetes.client.CustomObjectsApi, namespace: str
) -> None:
    name = _create_ftj(custom, namespace)["metadata"]["name"]

    patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Running"}}
    )
    assert patched["status"]["phase"] == "Running"
    assert patched["metadata"]["generation"] == 1, "a status write must not bump generation"

    # Through the main resource, status is silently dropped (the subresource's point).
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Failed"}})
    got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert got["status"]["phase"] == "Running"


def test_watch_sees_added_and_modified(custom: kubernetes.client.CustomObjectsApi, namespace: str) -> None:
    listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    since = listing["metadata"]["resourceVersion"]
    name = _create_ftj(custom, namespace)["metadata"]["name"]
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Running"}}
    )

    seen: list[tuple[str, str | None]] = []
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        resource_version=since,
        timeout_seconds=20,
    )
    for event in stream:
        seen.append((event["type"], (event["object"].get("status") or {}).get("phase")))
        if event["type"] == "MODIFIED":
            break
    assert seen[0] == ("ADDED", None)
    assert ("MODIFIED", "Running") in seen


def test_stale_resource_version_conflicts(custom: kubernetes.client.CustomObjectsApi, namespace: str) -> None:
    stale = _create_ftj(custom, namespace)
    name = stale["metadata"]["name"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"labels": {"touched": "yes"}}}
    )

    stale["metadata"]["labels"] = {"touched": "no"}
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, stale)
    assert err.value.status == 409


def test_rbac_forbids_until_a_role_grants(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, namespace: str
) -> None:
    with control_plane.service_account_client(namespace, "reader") as sa_client:
        as_sa = kubernetes.client.CustomObjectsApi(sa_client)
        with pytest.raises(ApiException) as err:
            as_sa.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        assert err.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in err.value.body

        rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "ftj-reader"},
                "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "ftj-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ftj-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        )
        # The RBAC authorizer reads through an informer: allow it a moment.
        control_plane.wait_for(
            "the RoleBinding to take effect",
            lambda: isinstance(as_sa.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL), dict),
            timeout=10,
        )
        # Still no write access: only what the Role grants.
        with pytest.raises(ApiException) as err:
            as_sa.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _ftj("denied"))
        assert err.value.status == 403


def test_service_account_kubeconfig_authenticates_as_the_service_account(
    control_plane: ControlPlane, namespace: str
) -> None:
    path = control_plane.service_account_kubeconfig(namespace, "operator")
    with kubernetes.config.new_client_from_config(config_file=str(path)) as client:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review({})
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:operator"


def _rayjob(name: str, **spec: Any) -> dict[str, Any]:
    head = {
        "rayStartParams": {},
        "template": {"spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.46.0"}]}},
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name},
        "spec": {"entrypoint": "python -c 'print(1)'", "rayClusterSpec": {"headGroupSpec": head}, **spec},
    }


def test_kuberay_schema_rejects_a_wrong_type(custom: kubernetes.client.CustomObjectsApi, namespace: str) -> None:
    custom.create_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayjobs", _rayjob("valid", shutdownAfterJobFinishes=True)
    )
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayjobs", _rayjob("invalid", shutdownAfterJobFinishes="yes")
        )
    assert err.value.status == 422
    assert "spec.shutdownAfterJobFinishes" in err.value.body


def test_garbage_collector_follows_owner_references(
    control_plane: ControlPlane,
    custom: kubernetes.client.CustomObjectsApi,
    core: kubernetes.client.CoreV1Api,
    namespace: str,
) -> None:
    owner = _create_ftj(custom, namespace)
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "owned",
                "ownerReferences": [
                    {
                        "apiVersion": owner["apiVersion"],
                        "kind": owner["kind"],
                        "name": owner["metadata"]["name"],
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            },
            "data": {"k": "v"},
        },
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, owner["metadata"]["name"])

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    control_plane.wait_for("GC to delete the owned ConfigMap", gone, timeout=30)


# --------------------------------------------------------------------------- KWOK


def test_job_runs_to_completion_on_an_edge_node(
    control_plane: ControlPlane,
    kube_api: kubernetes.client.ApiClient,
    core: kubernetes.client.CoreV1Api,
    namespace: str,
) -> None:
    batch = kubernetes.client.BatchV1Api(kube_api)
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "export"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": {EDGE_LABEL: "true"},
                        "tolerations": [
                            {"key": EDGE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
                        ],
                        "containers": [{"name": "export", "image": BUSYBOX, "command": ["true"]}],
                    }
                },
            },
        },
    )

    def complete() -> bool:
        conditions = batch.read_namespaced_job_status("export", namespace).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conditions)

    control_plane.wait_for("Job export Complete", complete, timeout=60)
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=export").items
    assert [p.status.phase for p in pods] == ["Succeeded"]
    assert pods[0].spec.node_name.startswith("edge-")


def _gpu_pod(name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "train",
                    "image": BUSYBOX,
                    # Extended resources: a limit alone sets the request to the same value.
                    "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
                }
            ]
        },
    }


def test_gpu_pod_is_scheduled_on_a_gpu_node(
    control_plane: ControlPlane, core: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_pod(namespace, _gpu_pod("two-gpus", 2))
    core.create_namespaced_pod(namespace, _gpu_pod("nine-gpus", 9))  # no node has 9

    control_plane.wait_for(
        "pod two-gpus Running",
        lambda: core.read_namespaced_pod("two-gpus", namespace).status.phase == "Running",
        timeout=60,
    )
    pod = core.read_namespaced_pod("two-gpus", namespace)
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.present"] == "true"

    def unschedulable() -> bool:
        conditions = core.read_namespaced_pod("nine-gpus", namespace).status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    control_plane.wait_for("pod nine-gpus Unschedulable", unschedulable, timeout=30)
