"""Pod Security `restricted`, judged by the API server's own PodSecurity admission: every pod template edgetune
renders (Ray head, workers, submitter, export Jobs) and every pod of the chart (MinIO on) is created as a Pod,
server dry run, in a namespace that enforces the profile. The job's NetworkPolicies, PodDisruptionBudget and
Ray token Secret go through the same server-side validation. (The pods KubeRay itself builds from these
templates are admitted under the same profile in test_kuberay.py.)"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import kubernetes.dynamic
import pytest
import yaml
from helmtool import template
from kubeenv import REPO_ROOT, ControlPlane, ignore_not_found, unique_name
from kubernetes.client.exceptions import ApiException

from edgetune_operator.api import parse_job
from edgetune_operator.identity import JobRef
from edgetune_operator.render import (
    OperatorDefaults,
    rayjob_name,
    render_export_job,
    render_job_safeguards,
    render_rayjob,
)
from edgetune_operator.security import render_ray_auth_secret

pytestmark = pytest.mark.controlplane
EXAMPLES = ["bert-imdb", "resnet-cifar10", "quickstart-kind", "minilm-sentiment-kind"]
ENFORCE = "pod-security.kubernetes.io/enforce"


@pytest.fixture(scope="module")
def restricted(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace that enforces the restricted profile (at the server's latest version)."""
    with control_plane.api_client() as api:
        core = kubernetes.client.CoreV1Api(api)
        name = unique_name("restricted")
        labels = {ENFORCE: "restricted", f"{ENFORCE}-version": "latest"}
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        control_plane.wait_for(f"{name}/default", lambda: core.read_namespaced_service_account("default", name))
        try:
            yield name
        finally:
            ignore_not_found(lambda: core.delete_namespace(name))


def as_pod(name: str, namespace: str, pod_template: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": name, "namespace": namespace, "labels": pod_template.get("metadata", {}).get("labels", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": copy.deepcopy(pod_template["spec"])}


def rendered_pods(example: str, namespace: str) -> list[dict[str, Any]]:
    document = yaml.safe_load((REPO_ROOT / "examples" / f"{example}.yaml").read_text())
    spec = parse_job(document).spec
    job = JobRef(example, namespace, "0000-uid")
    cluster = render_rayjob(job, spec, 1, OperatorDefaults())["spec"]
    templates = {
        "head": cluster["rayClusterSpec"]["headGroupSpec"]["template"],
        "worker": cluster["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
        "submitter": cluster["submitterPodTemplate"],
    }
    for target in spec.export:
        export = render_export_job(job, spec, target, 1, OperatorDefaults())
        templates[f"export-{target.name}"] = export["spec"]["template"]
    return [as_pod(f"{example}-{role}", namespace, t) for role, t in templates.items()]


def admit(api: kubernetes.client.ApiClient, pod: dict[str, Any]) -> None:
    """Create the pod, server dry run; a PodSecurity violation is a 403 naming each failed check. Its
    ServiceAccount must exist (the ServiceAccount admission plugin looks it up first): made here, for real."""
    core = kubernetes.client.CoreV1Api(api)
    namespace = pod["metadata"]["namespace"]
    account = pod["spec"].get("serviceAccountName")
    if account:
        try:
            core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
        except ApiException as err:
            if err.status != 409:
                raise
    try:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    except ApiException as err:
        pytest.fail(f"{pod['metadata']['name']} refused: {err.status} {err.body}", pytrace=False)


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_rendered_pod_is_admitted_as_restricted(
    kube_api: kubernetes.client.ApiClient, restricted: str, example: str
) -> None:
    pods = rendered_pods(example, restricted)
    assert len(pods) >= 3 + (example != "quickstart-kind")  # head, worker, submitter (+ exports)
    for pod in pods:
        admit(kube_api, pod)


def test_the_namespace_does_enforce_the_profile(kube_api: kubernetes.client.ApiClient, restricted: str) -> None:
    """The control: the same head without the runtime's seccomp profile is refused, naming the check."""
    head = rendered_pods("bert-imdb", restricted)[0]
    del head["spec"]["securityContext"]["seccompProfile"]
    admit(kube_api, rendered_pods("bert-imdb", restricted)[0])  # its ServiceAccount now exists
    with pytest.raises(ApiException) as refused:
        kubernetes.client.CoreV1Api(kube_api).create_namespaced_pod(restricted, head, dry_run="All")
    assert refused.value.status == 403 and "seccompProfile" in refused.value.body


def test_chart_pods_with_minio_are_admitted_as_restricted(
    kube_api: kubernetes.client.ApiClient, restricted: str
) -> None:
    documents = template({"minio": {"enabled": True}, "replicaCount": 2}, namespace=restricted)
    workloads = [d for d in documents if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")]
    assert {d["metadata"]["name"] for d in workloads} >= {"edgetune-operator", "edgetune-minio"}
    assert any(d["kind"] == "Job" for d in workloads)  # the bucket hook
    for workload in workloads:
        admit(kube_api, as_pod(f"chart-{workload['metadata']['name']}", restricted, workload["spec"]["template"]))


def test_job_safeguards_and_token_secret_validate_on_the_server(
    kube_api: kubernetes.client.ApiClient, restricted: str
) -> None:
    document = yaml.safe_load((REPO_ROOT / "examples" / "bert-imdb.yaml").read_text())
    job = JobRef("bert-imdb", restricted, "0000-uid")
    objects = [
        *render_job_safeguards(job, parse_job(document).spec, OperatorDefaults()),
        render_ray_auth_secret(job, rayjob_name(job.name, 1), 1, "token"),
    ]
    assert {o["kind"] for o in objects} == {"NetworkPolicy", "PodDisruptionBudget", "Secret"}
    dynamic = kubernetes.dynamic.DynamicClient(kube_api)
    for obj in objects:
        body = copy.deepcopy(obj)
        body["metadata"].pop("ownerReferences")  # the owner does not exist here; the operator tests cover it
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.create(body=body, namespace=restricted, query_params=[("dryRun", "All")])
