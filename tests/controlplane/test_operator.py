"""The operator on the real control plane, with only the chart's RBAC; the tests play KubeRay by patching
RayJob status, and KWOK runs export Jobs' pods on the fake edge nodes."""

from __future__ import annotations

import base64
import copy
import random
import time
from pathlib import Path

import kubernetes.client
import pytest
from ftjcluster import GROUP, PLURAL, VERSION, Cluster, can, eventually, job_document, phase_is, wait_allowed
from kubeenv import ControlPlane
from operatorproc import OperatorProcess, running_operator

from edgetune_operator.identity import LABEL_JOB

pytestmark = pytest.mark.controlplane


def test_apply_renders_configmap_rayjob_and_trainer_identity(operator: OperatorProcess, cluster: Cluster) -> None:
    cluster.create_secret()
    created = cluster.apply(job_document())
    eventually("RayJob bert-a1", lambda: cluster.rayjobs("bert"))
    rayjob = cluster.rayjob("bert-a1")  # accepted by KubeRay v1.7.0's real schema
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 4
    assert workers["template"]["spec"]["containers"][0]["image"] == "registry.test/edgetune-trainer:0.1.0"
    config_map = cluster.core.read_namespaced_config_map("bert-a1-config", cluster.namespace)
    assert '"name": "bert"' in config_map.data["trainer-config.json"]
    role = cluster.rbac.read_namespaced_role("bert-trainer", cluster.namespace)
    assert role.rules[0].resource_names == ["bert"]
    head = f"system:serviceaccount:{cluster.namespace}:bert-trainer"
    wait_allowed(cluster.api, head, [("patch", GROUP, "finetunejobs/status", cluster.namespace, "bert")])
    for verb, resource, name in [
        ("patch", "finetunejobs/status", "another-job"),
        ("patch", "finetunejobs", "bert"),
        ("get", "secrets", "bert-a1-ray-auth"),
    ]:
        group = "" if resource == "secrets" else GROUP
        assert not can(cluster.api, head, verb, group, resource, cluster.namespace, name), (verb, resource, name)
    # Ray's token, per attempt, in a Secret owned by the job; the job's NetworkPolicies and disruption budget.
    auth = rayjob["spec"]["rayClusterSpec"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "bert-a1-ray-auth"}
    secret = cluster.core.read_namespaced_secret("bert-a1-ray-auth", cluster.namespace)
    assert len(base64.b64decode(secret.data["auth_token"])) >= 32
    owned = [secret.metadata.owner_references[0].uid]
    for name in ("bert-ray", "bert-export"):
        policy = cluster.networking.read_namespaced_network_policy(name, cluster.namespace)
        owned.append(policy.metadata.owner_references[0].uid)
    budget = cluster.policy.read_namespaced_pod_disruption_budget("bert-ray", cluster.namespace)
    assert budget.spec.min_available == 4  # of 4 workers and the head
    owned.append(budget.metadata.owner_references[0].uid)
    assert set(owned) == {created["metadata"]["uid"]}
    status = eventually("Launching", phase_is(cluster, "bert", "Launching"))
    assert status["attempt"] == 1 and status["rayJobName"] == "bert-a1"
    cluster.has_events("bert", ("Normal", "Launched"))
    expected = [
        "edgetune_attempts_total 1.0",
        'edgetune_jobs{namespace="' + cluster.namespace + '",phase="Launching"} 1.0',
        "edgetune_launch_seconds_count 1.0",
    ]  # the phase gauge is set after the status patch: wait for it rather than race it
    eventually("operator metrics", lambda: all(line in operator.metrics() for line in expected))


def test_invalid_spec_fails_with_messages_and_launches_nothing(operator: OperatorProcess, cluster: Cluster) -> None:
    document = job_document("broken")
    document["spec"]["training"]["precision"] = "fp16"  # the schema allows it; the cross-field rule does not
    document["spec"]["resources"]["gpusPerWorker"] = 0
    cluster.apply(document)
    status = eventually("Failed", phase_is(cluster, "broken", "Failed"))
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False" and "fp16 needs GPUs" in validated["message"]
    cluster.has_events("broken", ("Warning", "InvalidSpec"))
    time.sleep(1)
    assert cluster.rayjobs("broken") == []


def test_missing_secret_holds_launch_until_created(operator: OperatorProcess, cluster: Cluster) -> None:
    cluster.apply(job_document())
    status = eventually("Pending", phase_is(cluster, "bert", "Pending"))
    launched = next(c for c in status["conditions"] if c["type"] == "Launched")
    assert "edgetune-s3" in launched["message"] and "does not exist" in launched["message"]
    assert cluster.rayjobs("bert") == []
    cluster.create_secret()
    eventually("RayJob after the Secret appears (resync)", lambda: cluster.rayjobs("bert"), timeout=20)


def test_lifecycle_retry_resume_export_succeeded(
    operator: OperatorProcess, cluster: Cluster, control_plane: ControlPlane
) -> None:
    cluster.create_secret()
    cluster.apply(job_document())
    eventually("RayJob a1", lambda: cluster.rayjobs("bert"))
    cluster.play_kuberay("bert-a1", "Running", "RUNNING")
    eventually("Running", phase_is(cluster, "bert", "Running"))

    # The Ray driver reports progress with the per-job identity the operator created, and nothing more.
    with control_plane.api_client() as admin:
        user = f"system:serviceaccount:{cluster.namespace}:bert-trainer"
        wait_allowed(admin, user, [("patch", GROUP, "finetunejobs/status", cluster.namespace, "bert")])
    with control_plane.service_account_client(cluster.namespace, "bert-trainer", create=False) as trainer_api:
        trainer = kubernetes.client.CustomObjectsApi(trainer_api)
        checkpoint = "s3://edgetune/jobs/" + cluster.namespace + "/bert/checkpoints/checkpoint_000020-ab12cd"
        progress = {"step": 20, "totalSteps": 100, "epoch": 0, "percent": 20, "loss": 0.41}
        trainer.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            "bert",
            {"status": {"progress": progress, "latestCheckpoint": checkpoint}},
        )
        with pytest.raises(kubernetes.client.ApiException) as denied:
            trainer.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "bert", {"spec": {}})
        assert denied.value.status == 403
    assert cluster.status("bert")["progress"]["step"] == 20

    cluster.play_kuberay("bert-a1", "Failed", "FAILED", "AppFailed", "worker 2 was OOM-killed")
    eventually("attempt 2", lambda: len(cluster.rayjobs("bert")) == 2)
    status = eventually("attempt 2 in status", lambda: (s := cluster.status("bert")).get("attempt") == 2 and s)
    launched = next(c for c in status["conditions"] if c["type"] == "Launched")
    assert f"resuming from {checkpoint}" in launched["message"]
    assert status["progress"]["step"] == 20  # the trainer's fields survive the operator's patches
    cluster.has_events("bert", ("Warning", "AttemptFailed"))
    assert cluster.core.read_namespaced_config_map("bert-a2-config", cluster.namespace)

    cluster.play_kuberay("bert-a2", "Complete", "SUCCEEDED")
    eventually("export Job", lambda: cluster.batch.list_namespaced_job(cluster.namespace).items)
    export = cluster.batch.read_namespaced_job("bert-export-edge-int8", cluster.namespace)
    assert export.spec.template.spec.node_selector == {"edgetune.dev/edge": "true"}
    assert export.spec.template.spec.volumes[0].config_map.name == "bert-a2-config"
    # KWOK schedules the pod on an edge node and completes it.
    status = eventually("Succeeded", phase_is(cluster, "bert", "Succeeded"), timeout=60)
    assert status["exports"][0]["name"] == "edge-int8" and status["exports"][0]["phase"] == "Succeeded"
    pods = cluster.core.list_namespaced_pod(cluster.namespace, label_selector="edgetune.dev/component=export").items
    assert pods and all(p.spec.node_name.startswith("edge") for p in pods)
    cluster.has_events("bert", ("Normal", "Succeeded"), ("Normal", "ExportSucceeded"))
    assert "completionTime" in status
    eventually("exports metric", lambda: 'edgetune_exports_total{result="succeeded"} 1.0' in operator.metrics())
    assert len(cluster.rayjobs("bert")) == 2


def test_backoff_limit_gives_up_quoting_the_reason(operator: OperatorProcess, cluster: Cluster) -> None:
    cluster.create_secret()
    cluster.apply(job_document(backoffLimit=0))
    eventually("RayJob a1", lambda: cluster.rayjobs("bert"))
    cluster.play_kuberay("bert-a1", "Complete", "FAILED", "AppFailed", "CUDA error: device-side assert")
    status = eventually("Failed", phase_is(cluster, "bert", "Failed"))
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "CUDA error: device-side assert" in failed["message"]
    time.sleep(1)
    assert len(cluster.rayjobs("bert")) == 1


def test_suspend_and_resume(operator: OperatorProcess, cluster: Cluster) -> None:
    cluster.create_secret()
    cluster.apply(job_document())
    eventually("RayJob a1", lambda: cluster.rayjobs("bert"))
    cluster.play_kuberay("bert-a1", "Running", "RUNNING")
    eventually("Running", phase_is(cluster, "bert", "Running"))
    patch = {"spec": {"runPolicy": {"suspend": True}}}
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "bert", patch)
    eventually("RayJob suspended", lambda: cluster.rayjob("bert-a1")["spec"].get("suspend") is True)
    eventually("Suspended", phase_is(cluster, "bert", "Suspended"))
    cluster.play_kuberay("bert-a1", "Suspended")
    patch = {"spec": {"runPolicy": {"suspend": False}}}
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "bert", patch)
    eventually("RayJob resumed", lambda: cluster.rayjob("bert-a1")["spec"].get("suspend") is False)
    assert len(cluster.rayjobs("bert")) == 1  # KubeRay resubmits the same RayJob; the trainer resumes


def reconciles(operator: OperatorProcess) -> float:
    line = next(x for x in operator.metrics().splitlines() if x.startswith("edgetune_reconcile_seconds_count"))
    return float(line.split()[-1])


def test_progress_reports_move_the_step_without_a_reconcile(
    operator_without_resync: OperatorProcess, cluster: Cluster
) -> None:
    """The trainer's progress patches (100 a second at a thousand jobs) change nothing a decision reads: the
    operator moves the job's step metric and reconciles nothing; a change of its own fields still does."""
    operator = operator_without_resync
    cluster.create_secret()
    cluster.apply(job_document())
    eventually("RayJob a1", lambda: cluster.rayjobs("bert"))
    cluster.play_kuberay("bert-a1", "Running", "RUNNING")
    eventually("Running", phase_is(cluster, "bert", "Running"))
    step_series = f'edgetune_job_step{{job="bert",namespace="{cluster.namespace}"}}'
    eventually("step 0", lambda: f"{step_series} 0.0" in operator.metrics())
    time.sleep(1)  # the Running patch's own event, reconciled or not, is behind us
    before = reconciles(operator)
    for step in range(1, 6):  # as the head's StatusReporter sends them: a merge patch of status.progress
        patch = {"status": {"progress": {"step": step, "totalSteps": 100, "epoch": 0}}}
        cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, cluster.namespace, PLURAL, "bert", patch)
    eventually("step 5", lambda: f"{step_series} 5.0" in operator.metrics())
    assert reconciles(operator) == before
    # A status field the operator owns, changed by someone else, is reconciled (and put back).
    patch = {"status": {"phase": "Pending"}}
    cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, cluster.namespace, PLURAL, "bert", patch)
    eventually("Running again", phase_is(cluster, "bert", "Running"))
    assert reconciles(operator) > before


def test_delete_cleans_up_through_owner_references(operator: OperatorProcess, cluster: Cluster) -> None:
    cluster.create_secret()
    cluster.apply(job_document())
    eventually("RayJob a1", lambda: cluster.rayjobs("bert"))
    job = cluster.job("bert")
    assert not job["metadata"].get("finalizers")  # nothing outside the cluster to clean: no finalizer
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "bert")
    eventually("RayJob garbage-collected", lambda: cluster.rayjobs("bert") == [], timeout=60)
    eventually(
        "ConfigMap garbage-collected",
        lambda: (
            not cluster.core.list_namespaced_config_map(cluster.namespace, label_selector=f"{LABEL_JOB}=bert").items
        ),
        timeout=60,
    )


def test_operator_killed_mid_launch_never_duplicates(
    control_plane: ControlPlane, namespace: str, cluster: Cluster, tmp_path: Path
) -> None:
    """SIGKILL the operator at random moments while 12 jobs launch and retry, with a second operator
    racing the first for part of the time (as a broken peering would): one RayJob per attempt, always."""
    cluster.create_secret()
    rng = random.Random(7)
    with running_operator(control_plane, namespace, tmp_path) as first:
        rival = OperatorProcess(control_plane, namespace, tmp_path / "rival")
        (tmp_path / "rival").mkdir()
        rival.start(wait=False)
        names = [f"job-{i}" for i in range(12)]
        for name in names:
            cluster.apply(job_document(name))
            if rng.random() < 0.3:
                first.kill()
                time.sleep(rng.uniform(0, 0.3))
                first.start(wait=False)
        rival.kill()
        first.wait_healthy()
        eventually("every job launched", lambda: all(len(cluster.rayjobs(n)) == 1 for n in names), timeout=60)
        for name in names[:6]:
            cluster.play_kuberay(f"{name}-a1", "Failed", "FAILED", "AppFailed", "node lost")
            first.kill()
            time.sleep(rng.uniform(0, 0.2))
            first.start(wait=False)
        first.wait_healthy()
        eventually("attempt 2 of the failed ones", lambda: all(len(cluster.rayjobs(n)) == 2 for n in names[:6]), 60)
        expected = {n: 2 if n in names[:6] else 1 for n in names}
        eventually("status.attempt of every job", lambda: all(cluster.status(n).get("attempt") == a
                                                              for n, a in expected.items()), 60)  # fmt: skip
        time.sleep(4)  # a resync period: nothing more may appear
        for name in names:
            attempts = [r["metadata"]["labels"]["edgetune.dev/attempt"] for r in cluster.rayjobs(name)]
            assert attempts == (["1", "2"] if name in names[:6] else ["1"]), (name, attempts)
            assert cluster.status(name)["attempt"] == len(attempts)
    assert first.starts >= 8


def test_namespace_scoped_operator_ignores_other_namespaces(
    operator: OperatorProcess, cluster: Cluster, kube_api: kubernetes.client.ApiClient
) -> None:
    other = Cluster(kube_api, "default")
    document = copy.deepcopy(job_document("elsewhere"))
    other.apply(document)
    try:
        time.sleep(2)
        assert other.rayjobs("elsewhere") == [] and not other.status("elsewhere")
    finally:
        other.custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "elsewhere")


def test_a_distill_target_runs_its_own_rayjob_between_training_and_the_exports(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    cluster.create_secret()
    document = job_document()
    document["spec"]["export"][0]["distill"] = {"student": {"layers": 2}, "prune": {"heads": 0.5}}
    cluster.apply(document)  # the API server's schema (the generated CRD) takes the distill section
    eventually("RayJob a1", lambda: cluster.rayjobs("bert"))
    cluster.play_kuberay("bert-a1", "Complete", "SUCCEEDED")

    eventually("distillation RayJob d1", lambda: len(cluster.rayjobs("bert")) == 2)
    status = eventually("Distilling", phase_is(cluster, "bert", "Distilling"))
    assert status["attempt"] == 1 and status["rayJobName"] == "bert-a1"  # the training's, still
    distill = cluster.rayjob("bert-d1")
    assert distill["metadata"]["labels"]["edgetune.dev/stage"] == "distill"
    assert distill["spec"]["entrypoint"].startswith("edgetune-train --distill-all --config ")
    head = distill["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"][0]["configMap"]["name"] == "bert-a1-config"
    assert cluster.core.read_namespaced_secret("bert-d1-ray-auth", cluster.namespace)
    assert not cluster.batch.list_namespaced_job(cluster.namespace).items  # no export before the students

    cluster.play_kuberay("bert-d1", "Failed", "FAILED", "AppFailed", "worker 1 was OOM-killed")
    eventually("distillation attempt 2", lambda: len(cluster.rayjobs("bert")) == 3)
    cluster.has_events("bert", ("Normal", "DistillationLaunched"), ("Warning", "DistillationAttemptFailed"))
    eventually("attempts metric", lambda: "edgetune_attempts_total 3.0" in operator.metrics())  # a1, d1, d2
    cluster.play_kuberay("bert-d2", "Complete", "SUCCEEDED")

    eventually("export Job", lambda: cluster.batch.list_namespaced_job(cluster.namespace).items)
    export = cluster.batch.read_namespaced_job("bert-export-edge-int8", cluster.namespace)
    assert export.spec.template.spec.volumes[0].config_map.name == "bert-a1-config"
    status = eventually("Succeeded", phase_is(cluster, "bert", "Succeeded"), timeout=60)
    distilled = next(c for c in status["conditions"] if c["type"] == "Distilled")
    assert (distilled["status"], distilled["reason"]) == ("True", "Distilled")
    assert status["exports"][0]["phase"] == "Succeeded"
