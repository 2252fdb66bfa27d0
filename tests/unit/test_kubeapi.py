"""The operator's guarded status patch and its reading of API errors, without a cluster."""

from __future__ import annotations

import json

import jsonpatch
import pytest
from kubernetes.client.exceptions import ApiException

from edgetune_operator.kubeapi import collection_path, guarded_status_patch, namespace_gone

UID = "0f6d5a9e-4b1c-4d7e-9a51-3c2b1e0d9f88"


def apply(document: dict, ops: list[dict]) -> dict:
    return jsonpatch.apply_patch(document, ops)


def test_fields_are_set_one_by_one_and_the_trainers_stay() -> None:
    job = {"metadata": {"uid": UID}, "status": {"phase": "Launching", "completionTime": "x", "progress": {"step": 7}}}
    ops = guarded_status_patch(UID, {"phase": "Running", "attempt": 1, "completionTime": None}, has_status=True)
    assert ops[0] == {"op": "test", "path": "/metadata/uid", "value": UID}
    assert apply(job, ops)["status"] == {"phase": "Running", "attempt": 1, "progress": {"step": 7}}


def test_a_removal_succeeds_when_the_field_is_already_gone() -> None:
    job = {"metadata": {"uid": UID}, "status": {"phase": "Failed"}}
    ops = guarded_status_patch(UID, {"phase": "Launching", "completionTime": None}, has_status=True)
    assert apply(job, ops)["status"] == {"phase": "Launching"}


def test_a_new_job_gets_its_whole_status() -> None:
    ops = guarded_status_patch(UID, {"phase": "Pending", "attempt": None}, has_status=False)
    assert apply({"metadata": {"uid": UID}}, ops)["status"] == {"phase": "Pending"}


def test_another_job_of_the_same_name_is_not_patched() -> None:
    ops = guarded_status_patch(UID, {"phase": "Failed"}, has_status=True)
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply({"metadata": {"uid": "another"}, "status": {}}, ops)


def test_odd_keys_are_escaped() -> None:
    (_, op) = guarded_status_patch(UID, {"a/b~c": 1}, has_status=True)
    assert op["path"] == "/status/a~1b~0c"


def error(status: int, body: dict) -> ApiException:
    err = ApiException(status=status)
    err.body = json.dumps(body)
    return err


# Bodies as kube-apiserver v1.35 answers them (recorded from the control-plane tier).
NAMESPACE_NOT_FOUND = {"reason": "NotFound", "details": {"name": "t-1", "kind": "namespaces"}, "code": 404}
JOB_NOT_FOUND = {"reason": "NotFound", "details": {"name": "bert", "kind": "finetunejobs"}, "code": 404}
TERMINATING = {
    "reason": "Forbidden",
    "details": {"name": "x", "kind": "configmaps", "causes": [{"reason": "NamespaceTerminating"}]},
    "code": 403,
}
DENIED = {"reason": "Forbidden", "details": {"name": "x", "kind": "configmaps"}, "code": 403}


def test_namespace_gone_reads_the_api_servers_details() -> None:
    assert namespace_gone(error(404, NAMESPACE_NOT_FOUND))
    assert namespace_gone(error(403, TERMINATING))
    assert not namespace_gone(error(404, JOB_NOT_FOUND))
    assert not namespace_gone(error(403, DENIED))  # an RBAC denial is a real defect: it must be reported
    no_json = ApiException(status=404)
    no_json.body = "404 page not found"  # an API group the server does not serve
    assert not namespace_gone(no_json)


def test_each_created_kind_has_its_collection_path() -> None:
    meta = {"name": "x", "namespace": "team-a"}
    assert collection_path({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}) == (
        "/api/v1/namespaces/team-a/configmaps"
    )
    assert collection_path({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta}) == (
        "/apis/ray.io/v1/namespaces/team-a/rayjobs"
    )
    assert collection_path({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta}) == (
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings"
    )
