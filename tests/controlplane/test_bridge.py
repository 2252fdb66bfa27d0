"""The bridge between the operator and the trainer: take what the operator rendered into the real API server
(the RayJob's entrypoint and head env, the attempt's ConfigMap, the per-job ServiceAccount) and run it with
`ray job submit` on a local Ray head, as KubeRay's submitter would. The test plays the kubelet: it resolves
the Secret references, mounts the ConfigMap as a file and hands the driver a bound token of the job's
ServiceAccount. Training must finish, checkpoint to the S3 server, and report into the job's status; the Ray
nodes run with the attempt's token from its Secret (as KubeRay's authOptions gives it), and Ray refuses a
client without it."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from ftjcluster import Cluster, eventually, phase_is
from kubeenv import ControlPlane
from operatorproc import running_operator
from raybridge import run_rayjob_locally, stage_inputs
from s3server import CREDENTIALS, S3Server

pytestmark = [pytest.mark.controlplane, pytest.mark.trainer, pytest.mark.slow]


def test_rendered_rayjob_trains_with_ray_job_submit(
    control_plane: ControlPlane,
    namespace: str,
    cluster: Cluster,
    s3_server: S3Server,
    bucket: str,
    tiny_bert: Path,
    reviews: Path,
    tmp_path: Path,
) -> None:
    stage_inputs(s3_server, bucket, cluster, tiny_bert, reviews)
    document = {
        "apiVersion": "edgetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bridge"},
        "spec": {
            "model": {"source": f"s3://{bucket}/models/tiny-bert", "task": "text-classification", "numLabels": 2},
            "dataset": {"source": f"s3://{bucket}/data/{reviews.name}", "validationFraction": 0.2, "maxLength": 32},
            "training": {"epochs": 1, "batchSizePerWorker": 16, "learningRate": 0.001, "seed": 5},
            "resources": {"workers": 2, "cpusPerWorker": 0.5},  # as quickstart-kind: Ray rounds a pod up to 1
            "storage": {"uri": f"s3://{bucket}/jobs", "endpoint": s3_server.endpoint, "credentialsSecret": "s3"},
            "checkpoint": {"everySteps": 10, "keep": 2},
        },
    }
    with running_operator(control_plane, namespace, tmp_path):
        cluster.apply(document)
        rayjob = eventually("RayJob", lambda: cluster.rayjobs("bridge"))[0]
        run_rayjob_locally(control_plane, cluster, rayjob, tmp_path)

        status = cluster.status("bridge")
        progress = status["progress"]
        assert progress["step"] == progress["totalSteps"] == 20 and progress["percent"] == 100
        assert 0 < progress["loss"] < 1.0 and "evalMetric" in progress
        checkpoint = status["latestCheckpoint"]
        assert checkpoint.startswith(f"s3://{bucket}/jobs/{namespace}/bridge/checkpoints/checkpoint_")
        s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{namespace}/bridge/")["Contents"]]
        assert any(k.startswith(checkpoint.removeprefix(f"s3://{bucket}/")) for k in keys)
        assert f"jobs/{namespace}/bridge/model/edgetune-model.json" in keys

        cluster.play_kuberay(rayjob["metadata"]["name"], "Complete", "SUCCEEDED")
        eventually("Succeeded (no export targets)", phase_is(cluster, "bridge", "Succeeded"))
    # Nothing the system wrote holds the secret's value.
    written = json.dumps(cluster.job("bridge")) + json.dumps(rayjob)
    written += json.dumps(
        cluster.core.read_namespaced_config_map(f"{rayjob['metadata']['name']}-config", namespace).data
    )
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in written
