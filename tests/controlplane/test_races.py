"""Races between the operator and the people who edit or delete its jobs, forced, not waited for.

The reconciler runs in-process against the real API server, as the chart's ServiceAccount, through a
`Kube` that lets another client act between two of the operator's own API calls: after call k of one
reconcile, for every k. So each interleaving that a loaded machine could produce by chance is produced
on purpose, once, and its outcome asserted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import kubernetes.client
import pytest
from ftjcluster import GROUP, PLURAL, VERSION, Cluster, eventually, job_document
from inprocess import calls_of_one_reconcile, kube_of

from edgetune_operator.identity import LABEL_JOB
from edgetune_operator.reconciler import Reconciler

pytestmark = pytest.mark.controlplane


def children(cluster: Cluster, name: str) -> list[str]:
    """Every object the operator creates for job `name`, as kind/name."""
    selector = f"{LABEL_JOB}={name}"
    found = [f"RayJob/{r['metadata']['name']}" for r in cluster.rayjobs(name)]
    found += [f"ConfigMap/{c.metadata.name}" for c in cluster.core.list_namespaced_config_map(
        cluster.namespace, label_selector=selector).items]  # fmt: skip
    found += [f"ServiceAccount/{a.metadata.name}" for a in cluster.core.list_namespaced_service_account(
        cluster.namespace, label_selector=selector).items]  # fmt: skip
    found += [f"Role/{r.metadata.name}" for r in cluster.rbac.list_namespaced_role(
        cluster.namespace, label_selector=selector).items]  # fmt: skip
    return found


def delete_job(cluster: Cluster, name: str) -> Callable[[], None]:
    return lambda: cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, name)


def test_a_job_deleted_at_any_point_of_its_launch_ends_the_reconcile_quietly(
    reconciler: Reconciler, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.create_secret()
    cluster.apply(job_document("probe"))
    launch = calls_of_one_reconcile(reconciler, cluster.namespace, "probe")
    assert launch[-1] == "patch_job_status" and "create" in launch, launch
    names = []
    for after in range(1, len(launch)):  # deleted right after call `after`: before every later call
        name = f"deleted-after-{after}"
        names.append(name)
        cluster.apply(job_document(name))
        kube_of(reconciler).interleave(after, delete_job(cluster, name))
        with caplog.at_level(logging.INFO, logger="edgetune.operator"):
            caplog.clear()
            assert reconciler.reconcile(cluster.namespace, name) is None, launch[after - 1]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], (launch[after - 1], caplog.text)
        with pytest.raises(kubernetes.client.ApiException) as gone:
            cluster.job(name)
        assert gone.value.status == 404
    # Whatever the launch had created before the deletion goes with the job (owner references).
    eventually("children garbage-collected", lambda: not any(children(cluster, n) for n in names), timeout=60)
    print(f"\nFIGURE: a launch makes {len(launch)} API calls ({', '.join(launch)}); deleted after each of the "
          f"first {len(names)}: every reconcile ended quietly, 0 children left")  # fmt: skip


def test_a_job_recreated_under_the_same_name_mid_reconcile_is_not_written_for_the_old_one(
    reconciler: Reconciler, cluster: Cluster
) -> None:
    cluster.create_secret()
    cluster.apply(job_document("probe"))
    launch = calls_of_one_reconcile(reconciler, cluster.namespace, "probe")
    name = "again"
    cluster.apply(job_document(name))
    old_uid = cluster.job(name)["metadata"]["uid"]

    hold = {"metadata": {"finalizers": ["edgetune.test/hold"]}}  # keeps the old RayJob until the test lets go

    def recreate() -> None:
        cluster.custom.patch_namespaced_custom_object("ray.io", "v1", cluster.namespace, "rayjobs", f"{name}-a1", hold)
        delete_job(cluster, name)()
        cluster.apply(job_document(name, backoffLimit=3))

    # Right before the status patch: the old job's decision is made and its children created.
    kube_of(reconciler).interleave(launch.index("patch_job_status"), recreate)
    assert reconciler.reconcile(cluster.namespace, name) is None
    new = cluster.job(name)
    assert new["metadata"]["uid"] != old_uid
    assert "status" not in new  # nothing of the old job's reconcile was written onto the new one

    # While the old job's RayJob is still there (held by the test's finalizer, as a slow garbage collector
    # would leave it), the new job does not launch: its children would collide with the old ones by name.
    assert reconciler.reconcile(cluster.namespace, name) is None
    assert "status" not in cluster.job(name)
    release = {"metadata": {"finalizers": None}}
    cluster.custom.patch_namespaced_custom_object("ray.io", "v1", cluster.namespace, "rayjobs", f"{name}-a1", release)
    # Once every old child is gone, the new job launches with children of its own.
    eventually("the old job's children garbage-collected", lambda: not children(cluster, name), timeout=60)
    reconciler.reconcile(cluster.namespace, name)
    owners = [r["metadata"]["ownerReferences"][0]["uid"] for r in cluster.rayjobs(name)]
    assert owners == [new["metadata"]["uid"]] and cluster.status(name)["attempt"] == 1
    config = cluster.core.read_namespaced_config_map(f"{name}-a1-config", cluster.namespace)
    assert config.metadata.owner_references[0].uid == new["metadata"]["uid"]


def test_a_run_policy_edit_racing_a_failure_is_always_seen(reconciler: Reconciler, cluster: Cluster) -> None:
    """A user sets backoffLimit 0 and then the running attempt fails, both while a reconcile is running,
    between any two of its calls: the failure must be final (one RayJob), never retried on the old limit."""
    cluster.create_secret()

    def running_job(name: str) -> None:
        cluster.apply(job_document(name, backoffLimit=2))
        reconciler.reconcile(cluster.namespace, name)  # launches attempt 1
        cluster.play_kuberay(f"{name}-a1", "Running", "RUNNING")
        reconciler.reconcile(cluster.namespace, name)  # Running

    running_job("probe")
    steady = calls_of_one_reconcile(reconciler, cluster.namespace, "probe")
    for after in range(1, len(steady) + 1):
        name = f"edited-after-{after}"
        running_job(name)

        def edit_then_fail(name: str = name) -> None:
            patch = {"spec": {"runPolicy": {"backoffLimit": 0}}}
            cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, name, patch)
            cluster.play_kuberay(f"{name}-a1", "Failed", "FAILED", "AppFailed", "boom")

        kube_of(reconciler).interleave(after, edit_then_fail)
        reconciler.reconcile(cluster.namespace, name)
        reconciler.reconcile(cluster.namespace, name)  # the reconcile of the next event
        status = cluster.status(name)
        assert [r["metadata"]["name"] for r in cluster.rayjobs(name)] == [f"{name}-a1"], (steady[after - 1], status)
        assert status["phase"] == "Failed", (steady[after - 1], status)
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "BackoffLimitExceeded", failed


def test_a_namespace_deleted_mid_launch_ends_the_reconcile_quietly(
    reconciler: Reconciler, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Creating a child in a namespace being deleted is refused (403, NamespaceTerminating) while the job
    itself may still be there: that, too, is the job going away, not an error."""
    cluster.create_secret()
    cluster.apply(job_document("probe"))
    launch = calls_of_one_reconcile(reconciler, cluster.namespace, "probe")
    cluster.apply(job_document("doomed"))
    kube_of(reconciler).interleave(launch.index("create"), lambda: cluster.core.delete_namespace(cluster.namespace))
    with caplog.at_level(logging.INFO, logger="edgetune.operator"):
        assert reconciler.reconcile(cluster.namespace, "doomed") is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "deleted during its reconcile" in caplog.text


def test_a_spec_edit_racing_the_launch_is_what_launches(reconciler: Reconciler, cluster: Cluster) -> None:
    """A job waits for its Secret; the user edits the spec and creates the Secret, both between two of the
    calls of a reconcile: what launches is the edited spec, whichever two calls the edit fell between."""
    waiting = calls_of_one_reconcile_of_a_waiting_job(reconciler, cluster)
    for after in range(1, len(waiting) + 1):
        name, secret = f"edited-{after}", f"s3-{after}"
        document = job_document(name)
        document["spec"]["storage"]["credentialsSecret"] = secret
        cluster.apply(document)
        reconciler.reconcile(cluster.namespace, name)  # Pending: no Secret yet

        def edit_and_create_secret(name: str = name, secret: str = secret) -> None:
            patch = {"spec": {"training": {"epochs": 5}}}
            cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, name, patch)
            cluster.create_secret(secret)

        kube_of(reconciler).interleave(after, edit_and_create_secret)
        reconciler.reconcile(cluster.namespace, name)
        reconciler.reconcile(cluster.namespace, name)  # the reconcile of the edit's event
        config = cluster.core.read_namespaced_config_map(f"{name}-a1-config", cluster.namespace)
        epochs = json.loads(config.data["trainer-config.json"])["training"]["epochs"]
        assert epochs == 5, (waiting[after - 1], epochs)


def calls_of_one_reconcile_of_a_waiting_job(reconciler: Reconciler, cluster: Cluster) -> list[str]:
    document = job_document("probe-waiting")
    document["spec"]["storage"]["credentialsSecret"] = "never-created"
    cluster.apply(document)
    reconciler.reconcile(cluster.namespace, "probe-waiting")
    waiting = calls_of_one_reconcile(reconciler, cluster.namespace, "probe-waiting")
    assert "secret_problem" in waiting and "create" not in waiting, waiting
    return waiting


def test_a_usable_secret_is_read_once_per_burst_and_a_missing_one_every_time(
    reconciler: Reconciler, cluster: Cluster
) -> None:
    """With the operator's Secret trust on, the second launch sharing a Secret reads neither the Secret nor
    the job again (nothing was read after the job); a Secret with a problem is checked at every reconcile,
    so creating it is seen at once."""
    reconciler.secret_trust_seconds = 60.0
    cluster.create_secret()
    cluster.apply(job_document("first"))
    cluster.apply(job_document("second"))
    first = calls_of_one_reconcile(reconciler, cluster.namespace, "first")
    second = calls_of_one_reconcile(reconciler, cluster.namespace, "second")
    assert first.count("secret_problem") == 1 and first.count("get_job") == 2, first
    assert "secret_problem" not in second and second.count("get_job") == 1, second
    assert cluster.rayjobs("second")
    document = job_document("third")
    document["spec"]["storage"]["credentialsSecret"] = "later"
    cluster.apply(document)
    for _ in range(2):
        waiting = calls_of_one_reconcile(reconciler, cluster.namespace, "third")
        assert "secret_problem" in waiting and "create" not in waiting, waiting
    cluster.create_secret("later")
    launched = calls_of_one_reconcile(reconciler, cluster.namespace, "third")
    assert "secret_problem" in launched and "create" in launched, launched
