"""Small, idempotent writes to the Kubernetes API for the child objects `render` builds."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from edgetune_operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger("edgetune.operator")


class MissingApiError(RuntimeError):
    """The cluster does not serve an API the operator needs (KubeRay's RayJob)."""


KUBERAY_MISSING = (
    "this cluster does not serve ray.io/v1 RayJobs: install the KubeRay operator (helm install kuberay-operator "
    "kuberay/kuberay-operator --version 1.7.0); the job launches at the next resync once it is there"
)


class Kube:
    """The typed APIs the operator uses, over one ApiClient."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.core = kubernetes.client.CoreV1Api(client)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self._events: queue.Queue[tuple[dict[str, Any], str, str, str]] = queue.Queue()
        threading.Thread(target=self._post_events, name="edgetune-events", daemon=True).start()

    def create(self, obj: dict[str, Any]) -> bool:
        """Create `obj`; False when it already exists (409), which callers treat as done."""
        kind = obj["kind"]
        try:
            self._post(collection_path(obj), obj)
        except ApiException as err:
            if err.status == 409:
                return False
            if err.status == 404 and kind == "RayJob" and not namespace_gone(err):
                raise MissingApiError(KUBERAY_MISSING) from err
            raise
        return True

    def _post(self, path: str, body: dict[str, Any]) -> None:
        """POST `body` as JSON, reading nothing of the reply but its status. The typed client methods turn
        the dict into the kind's model and the reply into another: in a burst of launches that was a fifth
        of the operator's CPU, for nothing the operator uses."""
        request = self.client.param_serialize(
            method="POST",
            resource_path=path,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request)
        response.read()
        if not 200 <= response.status < 300:
            self.client.response_deserialize(response, {})  # raises the ApiException, as a typed call would

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def iter_jobs(self, namespace: str | None, page: int = 100) -> Iterator[dict[str, Any]]:
        """Every FineTuneJob, read `page` jobs at a time: the whole list decoded at once held about 70 KB
        per job (managedFields included) for as long as its reader worked through it, and the memory it
        took stayed with the process."""
        token = None
        while True:
            options: dict[str, Any] = {"limit": page, **({"_continue": token} if token else {})}
            if namespace is None:
                listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **options)
            else:
                listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **options)
            yield from listing["items"]
            token = listing["metadata"].get("continue")
            if not token:
                return

    def patch_job_status(self, job: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        """Apply the operator's status `patch` (merge-patch form) to exactly the job that was read: see
        `guarded_status_patch`; returns the job as patched. A 404 means the job is gone; a 422 that the name
        now holds another job."""
        meta = job["metadata"]
        return self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
            guarded_status_patch(meta["uid"], patch, has_status="status" in job),
            _content_type="application/json-patch+json",
        )  # fmt: skip

    def list_rayjobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The RayJobs matching `selector`; none when the API is not served (creating one then says why)."""
        try:
            found = self.custom.list_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayjobs", label_selector=selector
            )
        except ApiException as err:
            if err.status == 404:
                return []
            raise
        return list(found["items"])

    def patch_rayjob(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name, patch)

    def delete_rayjob(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayjobs", name, propagation_policy="Background"
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def list_export_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items = self.batch.list_namespaced_job(namespace, label_selector=selector).items
        return [self.client.sanitize_for_serialization(item) for item in items]

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self.client.sanitize_for_serialization(item) for item in items]

    def secret_problem(self, namespace: str, name: str, keys: tuple[str, ...]) -> str | None:
        """Why Secret `name` cannot serve as storage credentials, or None. Values are never read out."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return f"Secret {namespace}/{name} (spec.storage.credentialsSecret) does not exist"
            if err.status == 403:
                return f"the operator may not read Secret {namespace}/{name}: {err.reason}"
            raise
        missing = [key for key in keys if key not in (secret.data or {})]
        if missing:
            return f"Secret {namespace}/{name} lacks key(s) {', '.join(missing)}"
        return None

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue a core/v1 Event on the FineTuneJob (what `kubectl describe ftj` shows); a background thread
        posts it, so a reconcile does not wait for its events."""
        self._events.put((job, type_, reason, message))

    def _post_events(self) -> None:
        while True:
            self._post_event(*self._events.get())

    def _post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        now = datetime.now(timezone.utc)
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "edgetune-operator"},
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:
            self._post(f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except ApiException as err:
            # A namespace deleted (or being deleted) with its jobs is no reason to alarm anyone.
            level = logging.DEBUG if namespace_gone(err) else logging.WARNING
            log.log(level, "could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err.reason)


# The kinds the operator creates, by their collection's name in the API.
PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "NetworkPolicy": "networkpolicies",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Job": "jobs",
    "RayJob": "rayjobs",
    "Event": "events",
}


def collection_path(obj: dict[str, Any]) -> str:
    """The URL path that creates `obj` in its namespace: /api/v1/... for the core group, /apis/... else."""
    api_version = obj["apiVersion"]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{obj['metadata']['namespace']}/{PLURALS[obj['kind']]}"


def guarded_status_patch(uid: str, patch: dict[str, Any], *, has_status: bool) -> list[dict[str, Any]]:
    """The JSON Patch (RFC 6902) for a merge-patch of status fields that applies only to the object with `uid`.

    Why not a merge patch: the status subresource ignores everything outside `status`, `metadata.uid`
    included, so a merge patch cannot say "only if this is still the same job"; a JSON Patch `test` op can.
    Each field is set on its own (`add` replaces a member), so the trainer's fields in between stay as they
    are. A removal is an `add` of null followed by `remove`, which succeeds whether or not the field is
    still there (a patch is validated once, after all of its ops)."""
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
    if not has_status:  # a new job: nothing of anyone's to keep yet
        return [*ops, {"op": "add", "path": "/status", "value": {k: v for k, v in patch.items() if v is not None}}]
    for key, value in patch.items():
        path = "/status/" + key.replace("~", "~0").replace("/", "~1")
        ops.append({"op": "add", "path": path, "value": value})
        if value is None:
            ops.append({"op": "remove", "path": path})
    return ops


def namespace_gone(err: ApiException) -> bool:
    """Did the API server refuse a write because its namespace is gone or being deleted?"""
    try:
        details = json.loads(err.body or "{}").get("details") or {}
    except ValueError:
        return False
    if err.status == 404:
        return details.get("kind") == "namespaces"
    return err.status == 403 and any(c.get("reason") == "NamespaceTerminating" for c in details.get("causes") or [])
