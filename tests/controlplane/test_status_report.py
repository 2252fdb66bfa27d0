"""The Ray driver's status reporter against the real API server, with the narrow grant the operator gives
the head pod (render_trainer_rbac): events in the order a real run delivers them reach `kubectl get ftj`.

Found on kind: checkpoint reports reach the driver through Ray Train's controller, after rank 0's progress
of later steps, and the PROGRESS column went 33, 13, 26, 40, 66, 53 ... and ended at 93 instead of 100.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ftjcluster import Cluster, job_document
from kubeenv import ControlPlane
from kubernetes.utils import create_from_dict

from edgetune_operator.render import JobRef, render_trainer_rbac, trainer_account_name
from edgetune_trainer.training.progress import ProgressEvent
from edgetune_trainer.training.status_report import ApiEndpoint, StatusReporter

pytestmark = pytest.mark.controlplane


def event(kind: str, step: int, **fields: object) -> ProgressEvent:
    return ProgressEvent(kind=kind, step=step, total_steps=75, epoch=step // 25, **fields)  # type: ignore[arg-type]


@pytest.fixture
def reporter(control_plane: ControlPlane, cluster: Cluster, kube_api, tmp_path: Path) -> StatusReporter:
    created = cluster.apply(job_document("report"))
    job = JobRef("report", cluster.namespace, created["metadata"]["uid"])
    for document in render_trainer_rbac(job):
        create_from_dict(kube_api, document, namespace=cluster.namespace)
    token = tmp_path / "token"
    account = trainer_account_name("report")
    token.write_text(control_plane.service_account_token(cluster.namespace, account, create=False))
    endpoint = ApiEndpoint(control_plane.server, token, control_plane.pki.ca_cert)
    return StatusReporter(endpoint, cluster.namespace, "report", lambda name: f"s3://b/ckpt/{name}", min_interval=0)


def test_a_late_checkpoint_report_moves_the_checkpoint_not_the_progress(reporter: StatusReporter, cluster: Cluster):
    reporter(event("progress", 25, loss=0.5))
    reporter(event("checkpoint", 20, checkpoint="checkpoint_000000020-ab"))  # arrives after step 25's progress
    status = cluster.status("report")
    assert status["progress"]["step"] == 25 and status["progress"]["percent"] == 33
    assert status["latestCheckpoint"] == "s3://b/ckpt/checkpoint_000000020-ab"
    assert reporter.failures == 0


def test_a_checkpoint_ahead_of_progress_moves_both(reporter: StatusReporter, cluster: Cluster) -> None:
    reporter(event("progress", 18, loss=0.5))
    reporter(event("checkpoint", 20, checkpoint="checkpoint_000000020-ab"))
    status = cluster.status("report")
    assert status["progress"]["step"] == 20
    assert status["latestCheckpoint"] == "s3://b/ckpt/checkpoint_000000020-ab"


def test_progress_after_a_worker_group_restart_goes_back_to_the_checkpoint(
    reporter: StatusReporter, cluster: Cluster
) -> None:
    reporter(event("progress", 27, loss=0.5))
    reporter(event("progress", 21, loss=0.6, resumed_from="checkpoint_000000020-ab"))  # rank 0, resumed
    assert cluster.status("report")["progress"]["step"] == 21
