"""Faults and hostile conditions on the real control plane (issue 9), each printing its figure:
the operator SIGKILLed 20+ times across launch, retry and export; concurrent status writers; spec edits
while a job runs; hostile documents applied to a live operator; secrets never written anywhere; the
training pods' identity limited to reporting their own job's status.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from ftjcluster import (
    ACCESS_KEY,
    GROUP,
    PLURAL,
    SECRET_KEY,
    VERSION,
    Cluster,
    can,
    eventually,
    job_document,
    phase_is,
    wait_allowed,
)
from kubeenv import ControlPlane
from kubernetes.client.rest import ApiException
from operatorproc import OperatorProcess, running_operator

from edgetune_operator.identity import LABEL_MANAGED_BY

pytestmark = pytest.mark.controlplane

FINAL = ("Succeeded", "Failed")


def everything_written(cluster: Cluster, logs: str) -> str:
    """Every object the system wrote in the namespace (Secrets excepted), every event, and the logs."""
    api = cluster.core.api_client
    custom, batch, rbac = cluster.custom, cluster.batch, cluster.rbac
    ns = cluster.namespace
    objects: list[Any] = [
        custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL),
        custom.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs"),
        batch.list_namespaced_job(ns),
        cluster.core.list_namespaced_pod(ns),
        cluster.core.list_namespaced_config_map(ns),
        cluster.core.list_namespaced_service_account(ns),
        cluster.core.list_namespaced_event(ns),
        rbac.list_namespaced_role(ns),
        rbac.list_namespaced_role_binding(ns),
    ]
    return json.dumps([api.sanitize_for_serialization(o) for o in objects]) + logs


def assert_no_credentials_in(text: str) -> None:
    for value in (ACCESS_KEY, SECRET_KEY):
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in text, f"a credential ({form[:6]}...) was written outside its Secret"


def owned_children(cluster: Cluster) -> list[tuple[str, str, list[str]]]:
    """(kind, name, owner uids) of everything the operator created in the namespace."""
    selector = f"{LABEL_MANAGED_BY}=edgetune"
    ns = cluster.namespace
    api = cluster.core.api_client
    found: list[tuple[str, str, list[str]]] = []
    listings = {
        "ConfigMap": cluster.core.list_namespaced_config_map(ns, label_selector=selector).items,
        "ServiceAccount": cluster.core.list_namespaced_service_account(ns, label_selector=selector).items,
        "Role": cluster.rbac.list_namespaced_role(ns, label_selector=selector).items,
        "RoleBinding": cluster.rbac.list_namespaced_role_binding(ns, label_selector=selector).items,
        "Job": cluster.batch.list_namespaced_job(ns, label_selector=selector).items,
    }
    for kind, items in listings.items():
        for item in items:
            body = api.sanitize_for_serialization(item)
            uids = [o["uid"] for o in body["metadata"].get("ownerReferences", [])]
            found.append((kind, body["metadata"]["name"], uids))
    for rayjob in cluster.custom.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs")["items"]:
        uids = [o["uid"] for o in rayjob["metadata"].get("ownerReferences", [])]
        found.append(("RayJob", rayjob["metadata"]["name"], uids))
    return found


def test_operator_killed_20_times_through_launch_retry_and_export(
    control_plane: ControlPlane, namespace: str, cluster: Cluster, tmp_path: Path
) -> None:
    """SIGKILL the operator at random moments between the steps of 10 jobs' lives (launch, running,
    failure and retry, success, export): never two RayJobs for an attempt, never two export Jobs for a
    target, nothing without an owner, and every job reaches a final phase."""
    cluster.create_secret()
    rng = random.Random(20)
    started = time.monotonic()
    kills = 0
    names = [f"kill-{i}" for i in range(10)]
    failing_once = set(names[:3])  # attempt 1 fails, attempt 2 succeeds ...
    failing_twice = {names[0]}  # ... except this one, which fails again: backoffLimit 1 exhausted

    with running_operator(control_plane, namespace, tmp_path) as operator:

        def kill_at_random(chance: float = 1.0) -> None:
            nonlocal kills
            if rng.random() < chance:
                operator.kill()
                kills += 1
                time.sleep(rng.uniform(0, 0.3))
                operator.start(wait=False)

        for name in names:  # launch: kills land between applies and the operator's creates
            cluster.apply(job_document(name))
            kill_at_random(0.4)
        operator.wait_healthy()
        eventually("every attempt 1", lambda: all(cluster.rayjobs(n) for n in names), 90)
        for name in names:
            cluster.play_kuberay(f"{name}-a1", "Running", "RUNNING")
        kill_at_random()
        for name in sorted(failing_once):  # retry: kills between the failure and attempt 2
            cluster.play_kuberay(f"{name}-a1", "Failed", "FAILED", "AppFailed", "node lost")
            kill_at_random()
        operator.wait_healthy()
        eventually("attempt 2 of the failed", lambda: all(len(cluster.rayjobs(n)) == 2 for n in failing_once), 90)
        for name in sorted(failing_once):
            if name in failing_twice:
                cluster.play_kuberay(f"{name}-a2", "Failed", "FAILED", "AppFailed", "node lost again")
            else:
                cluster.play_kuberay(f"{name}-a2", "Complete", "SUCCEEDED")
            kill_at_random()
        for name in names:  # success: kills between SUCCEEDED, the export Jobs and their completion
            if name not in failing_once:
                cluster.play_kuberay(f"{name}-a1", "Complete", "SUCCEEDED")
                kill_at_random(0.8)
        while kills < 20:
            kill_at_random()
            time.sleep(rng.uniform(0.2, 1.0))
        operator.wait_healthy()

        def final_statuses() -> dict[str, dict[str, Any]] | None:
            statuses = {n: cluster.status(n) for n in names}
            return statuses if all(s.get("phase") in FINAL for s in statuses.values()) else None

        statuses = eventually("every job final", final_statuses, 180)
        time.sleep(4)  # one more resync period: nothing may move or appear after the final phase
        logs = operator.log_text()

    elapsed = time.monotonic() - started
    phases = {n: cluster.status(n)["phase"] for n in names}
    assert phases == {n: statuses[n]["phase"] for n in names}
    assert phases == {n: "Failed" if n in failing_twice else "Succeeded" for n in names}
    for name in names:
        attempts = [r["metadata"]["labels"]["edgetune.dev/attempt"] for r in cluster.rayjobs(name)]
        assert attempts == (["1", "2"] if name in failing_once else ["1"]), (name, attempts)
    exports = [j.metadata.name for j in cluster.batch.list_namespaced_job(namespace).items]
    assert sorted(exports) == sorted(f"{n}-export-edge-int8" for n in names if n not in failing_twice)
    uids = {cluster.job(n)["metadata"]["uid"] for n in names}
    children = owned_children(cluster)
    orphans = [(kind, name) for kind, name, owners in children if not set(owners) & uids]
    assert orphans == []
    config_maps = sorted(name for kind, name, _ in children if kind == "ConfigMap")
    assert len(config_maps) == sum(len(cluster.rayjobs(n)) for n in names)  # one per attempt, no more
    assert "Traceback" not in logs
    assert_no_credentials_in(everything_written(cluster, logs))
    print(
        f"\nFIGURE: operator SIGKILLed {kills} times ({operator.starts} starts) across 10 jobs' launch, retry and "
        f"export: 13 RayJobs for 13 attempts, 9 export Jobs for 9 targets, 0 orphans of {len(children)} children, "
        f"10/10 final ({elapsed:.0f} s)"
    )


def test_concurrent_status_writers_never_conflict(
    operator: OperatorProcess, cluster: Cluster, control_plane: ControlPlane
) -> None:
    """The Ray driver's reporter and the operator write the same status concurrently. Both send merge
    patches without a resourceVersion, each of its own fields, so neither ever gets a 409 or undoes the other."""
    cluster.create_secret()
    cluster.apply(job_document("busy"))
    eventually("RayJob", lambda: cluster.rayjobs("busy"))
    with control_plane.api_client() as admin:
        trainer_user = f"system:serviceaccount:{cluster.namespace}:busy-trainer"
        wait_allowed(admin, trainer_user, [("patch", GROUP, "finetunejobs/status", cluster.namespace, "busy")])
    written: list[int] = []
    conflicts: list[int] = []
    stop = threading.Event()

    def report_progress() -> None:
        with control_plane.service_account_client(cluster.namespace, "busy-trainer", create=False) as api:
            trainer = kubernetes.client.CustomObjectsApi(api)
            step = 0
            while not stop.is_set():
                step += 1
                progress = {"step": step, "totalSteps": 100_000, "percent": step // 1000}  # percent: an integer
                patch = {"status": {"progress": progress}}
                stop.wait(0.02)  # far faster than the real reporter (one patch per 5 s), but not a busy loop
                try:
                    trainer.patch_namespaced_custom_object_status(
                        GROUP, VERSION, cluster.namespace, PLURAL, "busy", patch
                    )
                    written.append(step)
                except ApiException as err:
                    conflicts.append(err.status)

    reporter = threading.Thread(target=report_progress)
    reporter.start()
    try:
        for deployment, job_status in [("Running", "RUNNING"), ("Failed", "FAILED")]:
            cluster.play_kuberay("busy-a1", deployment, job_status, "AppFailed" if job_status == "FAILED" else "")
        eventually("attempt 2", lambda: cluster.status("busy").get("attempt") == 2)
        cluster.play_kuberay("busy-a2", "Running", "RUNNING")
        eventually("Running again", phase_is(cluster, "busy", "Running"))
    finally:
        stop.set()
        reporter.join()
    status = cluster.status("busy")
    assert conflicts == []
    assert status["progress"]["step"] == written[-1]  # the operator's patches never reverted the reporter's
    assert status["attempt"] == 2 and status["phase"] == "Running"
    assert "Conflict" not in operator.log_text() and "(409)" not in operator.log_text()
    print(f"\nFIGURE: {len(written)} progress patches raced the operator's status patches: 0 conflicts")


def test_spec_is_locked_once_launched_and_run_policy_stays_editable(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    cluster.apply(job_document("edited"))  # no Secret yet: held in Pending, not launched
    eventually("Pending", phase_is(cluster, "edited", "Pending"))
    patch = {"spec": {"training": {"epochs": 5}}}
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "edited", patch)
    cluster.create_secret()
    eventually("launched", lambda: cluster.rayjobs("edited"))
    config = cluster.core.read_namespaced_config_map("edited-a1-config", cluster.namespace)
    assert json.loads(config.data["trainer-config.json"])["training"]["epochs"] == 5  # the edit before launch
    eventually("status.attempt", lambda: cluster.status("edited").get("attempt") == 1)

    with pytest.raises(ApiException) as refused:
        patch = {"spec": {"training": {"epochs": 6}}}
        cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "edited", patch)
    assert refused.value.status == 422
    assert "cannot change once the job has launched" in refused.value.body
    for field, value in [("model", {"numLabels": 3}), ("export", []), ("resources", {"workers": 1})]:
        with pytest.raises(ApiException):
            patch = {"spec": {field: value}}
            cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "edited", patch)
    assert cluster.job("edited")["spec"]["training"]["epochs"] == 5

    # runPolicy stays editable and applies at once: no retries left, so this failure is final.
    patch = {"spec": {"runPolicy": {"backoffLimit": 0}}}
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "edited", patch)
    cluster.play_kuberay("edited-a1", "Failed", "FAILED", "AppFailed", "boom")
    status = eventually("Failed", phase_is(cluster, "edited", "Failed"))
    assert next(c for c in status["conditions"] if c["type"] == "Failed")["reason"] == "BackoffLimitExceeded"
    assert len(cluster.rayjobs("edited")) == 1


def test_hostile_documents_never_crash_the_live_operator(operator: OperatorProcess, cluster: Cluster) -> None:
    """Documents the API server accepts but the models refuse, or accept with hostile strings: each job
    ends Failed with a message or launches with nothing of the user's strings in the entrypoint."""
    cluster.create_secret()
    hostile: dict[str, dict[str, Any]] = {}
    shell = "$(touch /tmp/pwned); `id`; echo ${HOME} | sh"
    document = job_document("h-labels")
    document["spec"]["model"]["labels"] = [shell, "ラベル-\u202e"]
    hostile["h-labels"] = document
    document = job_document("h-fp16")
    document["spec"]["training"]["precision"] = "fp16"
    document["spec"]["resources"]["gpusPerWorker"] = 0
    hostile["h-fp16"] = document
    document = job_document("h-traversal")
    document["spec"]["storage"]["uri"] = "s3://edgetune/../../other-tenant"
    hostile["h-traversal"] = document
    document = job_document("h-" + "x" * 61)  # a 63-character name
    hostile[document["metadata"]["name"]] = document
    accepted_by_api = []
    for name, body in hostile.items():
        try:
            cluster.apply(body)
            accepted_by_api.append(name)
        except ApiException as err:
            assert err.status == 422 and err.body, name  # refused by the CRD schema, with its reason
    eventually("every accepted job decided", lambda: all(
        cluster.status(n).get("phase") in ("Failed", "Launching") for n in accepted_by_api
    ))  # fmt: skip
    for name in accepted_by_api:
        status = cluster.status(name)
        if status["phase"] == "Failed":
            validated = next(c for c in status["conditions"] if c["type"] == "Validated")
            assert validated["status"] == "False" and validated["message"], name
        else:
            (rayjob,) = cluster.rayjobs(name)
            assert shell not in rayjob["spec"]["entrypoint"] and "$(" not in rayjob["spec"]["entrypoint"]
    assert operator.process is not None and operator.process.poll() is None  # still alive ...
    operator.wait_healthy()  # ... and answering
    assert "Traceback" not in operator.log_text()
    print(f"\nFIGURE: {len(hostile)} hostile documents on a live operator: {len(accepted_by_api)} passed the "
          f"API server, each ended decided; 0 crashes")  # fmt: skip


def test_training_identity_can_only_report_its_own_status(
    operator: OperatorProcess, cluster: Cluster, kube_api: kubernetes.client.ApiClient
) -> None:
    cluster.create_secret()
    for name in ("mine", "theirs"):
        cluster.apply(job_document(name))
    eventually("both launched", lambda: cluster.rayjobs("mine") and cluster.rayjobs("theirs"))
    user = f"system:serviceaccount:{cluster.namespace}:mine-trainer"
    ns = cluster.namespace
    wait_allowed(kube_api, user, [(verb, GROUP, "finetunejobs/status", ns, "mine") for verb in ("get", "patch")])
    denied = [
        ("patch", GROUP, "finetunejobs/status", "theirs"),
        ("get", GROUP, "finetunejobs/status", "theirs"),
        ("patch", GROUP, "finetunejobs", "mine"),
        ("get", GROUP, "finetunejobs", "mine"),
        ("list", GROUP, "finetunejobs", ""),
        ("get", "", "secrets", "edgetune-s3"),
        ("list", "", "pods", ""),
        ("create", "ray.io", "rayjobs", ""),
        ("get", "", "configmaps", "mine-a1-config"),
    ]
    for verb, group, resource, name in denied:
        assert not can(kube_api, user, verb, group, resource, ns, name), (verb, resource, name)
    assert not can(kube_api, user, "patch", GROUP, "finetunejobs/status", "default", "mine")
    print(f"\nFIGURE: training identity: 2 allowed (its own status), {len(denied) + 1} denied")
