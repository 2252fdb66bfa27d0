"""Admin-side helpers for FineTuneJob tests on the control plane: apply, read status, play KubeRay."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import kubernetes.client
import yaml
from kubeenv import REPO_ROOT

from edgetune_operator.identity import LABEL_JOB

GROUP, VERSION, PLURAL = "edgetune.dev", "v1alpha1", "finetunejobs"
# Distinctive credentials, so that a test can grep everything the system wrote for them.
ACCESS_KEY = "AKIAEDGETUNETEST7Q2Z"
SECRET_KEY = "edgetune-test-secret-3f9c1a7d"


def job_document(name: str = "bert", **run_policy: Any) -> dict[str, Any]:
    document = yaml.safe_load((REPO_ROOT / "examples" / "bert-imdb.yaml").read_text())
    document["metadata"] = {"name": name}
    document["spec"]["runPolicy"] = {"backoffLimit": 1, **run_policy}
    return document


class Cluster:
    """Admin-side helpers of one test namespace."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.api = api
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)
        self.batch = kubernetes.client.BatchV1Api(api)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api)
        self.networking = kubernetes.client.NetworkingV1Api(api)
        self.policy = kubernetes.client.PolicyV1Api(api)

    def create_secret(self, name: str = "edgetune-s3") -> None:
        data = {
            "AWS_ACCESS_KEY_ID": base64.b64encode(ACCESS_KEY.encode()).decode(),
            "AWS_SECRET_ACCESS_KEY": base64.b64encode(SECRET_KEY.encode()).decode(),
        }
        self.core.create_namespaced_secret(self.namespace, {"metadata": {"name": name}, "data": data})

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, document)

    def job(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def rayjobs(self, job: str) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            "ray.io", "v1", self.namespace, "rayjobs", label_selector=f"{LABEL_JOB}={job}"
        )["items"]
        return sorted(items, key=lambda r: r["metadata"]["name"])

    def rayjob(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object("ray.io", "v1", self.namespace, "rayjobs", name)

    def play_kuberay(self, rayjob: str, deployment: str, job: str = "", reason: str = "", message: str = "") -> None:
        status = {"jobDeploymentStatus": deployment, "jobStatus": job, "reason": reason, "message": message}
        self.custom.patch_namespaced_custom_object_status(
            "ray.io", "v1", self.namespace, "rayjobs", rayjob, {"status": {k: v for k, v in status.items() if v}}
        )

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason) for e in items]

    def has_events(self, name: str, *expected: tuple[str, str]) -> None:
        """Wait for these (type, reason) events on `name`: the operator posts events from a thread of its
        own after the status patch, so a status already seen does not mean its event is there yet."""
        eventually(f"events {expected} on {name}", lambda: set(expected) <= set(self.events(name)))


def eventually(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def phase_is(cluster: Cluster, name: str, phase: str) -> Callable[[], Any]:
    return lambda: status if (status := cluster.status(name)).get("phase") == phase else None


def can(api: kubernetes.client.ApiClient, user: str, verb: str, group: str, resource: str, namespace: str = "",
        name: str = "") -> bool:  # fmt: skip
    """Would `user` be allowed? A SubjectAccessReview, as `kubectl auth can-i --as` asks it.
    `resource` may name a subresource: "finetunejobs/status"."""
    resource, _, subresource = resource.partition("/")
    groups = ["system:authenticated"]
    if user.startswith("system:serviceaccount:"):
        account_namespace = user.split(":")[2]
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{account_namespace}"]
    attributes = {"verb": verb, "group": group, "resource": resource, "subresource": subresource, "name": name}
    review = {"spec": {"user": user, "groups": groups, "resourceAttributes": {**attributes, "namespace": namespace}}}
    return bool(kubernetes.client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)


def wait_allowed(api: kubernetes.client.ApiClient, user: str, checks: list[tuple[str, str, str, str, str]]) -> None:
    """Wait until the API server's authorizer allows each (verb, group, resource, namespace, name) for `user`.
    RBAC objects reach the authorizer through an informer, a moment after they are written: a request
    made right after a Role is created can still be refused."""
    eventually(
        f"RBAC for {user} in effect",
        lambda: all(can(api, user, verb, group, resource, ns, name) for verb, group, resource, ns, name in checks),
    )
