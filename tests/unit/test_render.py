"""Child objects of a FineTuneJob, rendered by pure functions (the real KubeRay schema checks them in
tests/controlplane/test_operator.py)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from edgetune_operator.api import parse_job
from edgetune_operator.identity import LABEL_JOB
from edgetune_operator.render import (
    KUEUE_QUEUE_LABEL,
    MAX_RAYJOB_NAME,
    JobRef,
    OperatorDefaults,
    bounded_name,
    export_job_name,
    rayjob_name,
    render_config_map,
    render_export_job,
    render_rayjob,
    render_trainer_rbac,
)
from edgetune_trainer.config import StorageSpec

ROOT = Path(__file__).resolve().parents[2]
REF = JobRef("bert-imdb", "team-a", "0000-uid")


def bert_spec(**run_policy: object):
    document = yaml.safe_load((ROOT / "examples" / "bert-imdb.yaml").read_text())
    document["spec"]["runPolicy"].update(run_policy)
    return parse_job(document).spec


def test_rayjob_fields() -> None:
    spec = bert_spec(queueName="gpu-queue")
    rayjob = render_rayjob(REF, spec, 2, OperatorDefaults(trainer_image="reg/trainer:1"), deadline_left_s=500)
    meta, body = rayjob["metadata"], rayjob["spec"]
    assert meta["name"] == "bert-imdb-a2"
    assert meta["labels"][LABEL_JOB] == "bert-imdb" and meta["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert meta["ownerReferences"] == [REF.owner_reference()]
    assert meta["ownerReferences"][0]["controller"] is True
    assert body["shutdownAfterJobFinishes"] is True
    assert body["ttlSecondsAfterFinished"] == 600
    assert body["activeDeadlineSeconds"] == 500
    assert body["backoffLimit"] == 0
    assert shlex.split(body["entrypoint"])[:3] == ["edgetune-train", "--config", "/etc/edgetune/trainer-config.json"]
    workers = body["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    pod = workers["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "reg/trainer:1"
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert {"name": "train-metrics", "containerPort": 8090} in container["ports"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "edgetune-s3",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    head = body["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == "bert-imdb-trainer"
    assert head["nodeSelector"] == {"nvidia.com/gpu.present": "true"}  # the pool of the job, as its workers
    head_env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    assert head_env["EDGETUNE_STATUS_TARGET"] == "team-a/bert-imdb"
    assert head["volumes"][0]["configMap"]["name"] == "bert-imdb-a2-config"


def test_distillation_rayjob_mounts_the_trained_attempts_config_and_reports_no_progress() -> None:
    rayjob = render_rayjob(REF, bert_spec(), 1, OperatorDefaults(), distill_of=3)
    meta, body = rayjob["metadata"], rayjob["spec"]
    assert meta["name"] == "bert-imdb-d1" and meta["labels"]["edgetune.dev/stage"] == "distill"
    assert shlex.split(body["entrypoint"])[:2] == ["edgetune-train", "--distill-all"]
    head = body["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"][0]["configMap"]["name"] == "bert-imdb-a3-config"
    assert "EDGETUNE_STATUS_TARGET" not in {e["name"] for e in head["containers"][0]["env"]}
    worker = body["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
    # The job's NetworkPolicies select its pods by job and component: the distillation's pods are covered.
    assert worker["metadata"]["labels"]["edgetune.dev/component"] == "trainer"
    assert worker["metadata"]["labels"]["edgetune.dev/stage"] == "distill"
    training = render_rayjob(REF, bert_spec(), 1, OperatorDefaults())
    assert "edgetune.dev/stage" not in training["metadata"]["labels"]


def test_user_strings_never_reach_the_entrypoint() -> None:
    """The spec reaches the trainer as a file; the entrypoint holds only fixed strings."""
    document = yaml.safe_load((ROOT / "examples" / "bert-imdb.yaml").read_text())
    document["spec"]["dataset"]["textField"] = "$(rm -rf /); `id` | sh"
    spec = parse_job(document).spec
    rayjob = render_rayjob(REF, spec, 1, OperatorDefaults())
    assert "rm -rf" not in rayjob["spec"]["entrypoint"]
    config = json.loads(render_config_map(REF, spec, 1, OperatorDefaults())["data"]["trainer-config.json"])
    assert config["dataset"]["textField"] == "$(rm -rf /); `id` | sh"


def test_config_map_carries_defaults_and_no_credentials() -> None:
    document = yaml.safe_load((ROOT / "examples" / "bert-imdb.yaml").read_text())
    del document["spec"]["storage"]
    spec = parse_job(document).spec
    defaults = OperatorDefaults(
        storage=StorageSpec(uri="s3://chart-bucket/jobs", endpoint="http://minio:9000", credentials_secret="s3-creds")
    )
    config = json.loads(render_config_map(REF, spec, 1, defaults)["data"]["trainer-config.json"])
    assert config["storage"] == {
        "uri": "s3://chart-bucket/jobs",
        "endpoint": "http://minio:9000",
        "region": "us-east-1",
        "credentialsSecret": "s3-creds",
    }
    assert config["name"] == "bert-imdb" and config["namespace"] == "team-a"
    rayjob = render_rayjob(REF, spec, 1, defaults)
    env = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "AWS_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}},
    } in env


def test_trainer_rbac_is_one_job_status() -> None:
    sa, role, binding = render_trainer_rbac(REF)
    assert role["rules"] == [
        {
            "apiGroups": ["edgetune.dev"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["bert-imdb"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "team-a"}]


def test_export_job() -> None:
    spec = bert_spec()
    target = spec.export[0]
    job = render_export_job(REF, spec, target, 3, OperatorDefaults())
    assert job["metadata"]["name"] == "bert-imdb-export-edge-int8"
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == target.backoff_limit
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert pod["nodeSelector"] == {"edgetune.dev/edge": "true"}
    assert pod["tolerations"] == [{"key": "edgetune.dev/edge", "operator": "Exists", "effect": "NoSchedule"}]
    container = pod["containers"][0]
    assert container["command"][:2] == ["edgetune-export", "--job-config"]
    assert container["command"][-2:] == ["--status-file", "/dev/termination-log"]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert pod["volumes"][0]["configMap"]["name"] == "bert-imdb-a3-config"
    assert pod["restartPolicy"] == "Never"


@pytest.mark.parametrize("name", ["a" * 63, "9lives", "x" * 44 + "-y"])
def test_long_and_digit_names_fit_kuberay(name: str) -> None:
    for attempt in (1, 12, 101):
        rendered = rayjob_name(name, attempt)
        assert len(rendered) <= MAX_RAYJOB_NAME
        assert rendered[0].isalpha() and rendered.endswith(f"-a{attempt}")
    assert len(export_job_name(name, "t" * 40)) <= 63


def test_bounded_names_do_not_collide() -> None:
    one = bounded_name("a" * 50 + "one", "-a1", 47)
    two = bounded_name("a" * 50 + "two", "-a1", 47)
    assert one != two and len(one) == len(two) == 47
    assert bounded_name("short", "-a1", 47) == "short-a1"


def test_rendered_objects_share_no_mutable_parts() -> None:
    """A caller (or the client) changing one place of a rendered object must not change another: no YAML
    anchors, i.e. no dict or list reachable twice."""
    spec = bert_spec(queueName="q")
    for obj in (
        render_rayjob(REF, spec, 1, OperatorDefaults()),
        render_export_job(REF, spec, spec.export[0], 1, OperatorDefaults()),
    ):
        assert "&id" not in yaml.safe_dump(obj)


def test_ray_pods_turn_off_only_what_a_cluster_does_not_use() -> None:
    rayjob = render_rayjob(REF, bert_spec(), 1, OperatorDefaults())
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_enable_worker_prestart"] == "0"
        # Ray's metrics (the chart's PodMonitor scrapes them) and task events (the Ray dashboard) stay on.
        assert "RAY_enable_metrics_collection" not in env and "RAY_task_events_report_interval_ms" not in env
