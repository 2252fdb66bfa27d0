"""KubeRay missing from the cluster: the operator keeps running, holds the job in Pending with a message
that says what to install, and launches it once the RayJob CRD appears."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest
from ftjcluster import Cluster, eventually, job_document, phase_is
from kubeenv import REPO_ROOT, ControlPlane
from operatorproc import running_operator

pytestmark = pytest.mark.controlplane
FINETUNEJOB_CRD = REPO_ROOT / "crds" / "finetunejobs.edgetune.dev.yaml"
RAYJOB_CRD = REPO_ROOT / "tests" / "fixtures" / "kuberay" / "v1.7.0" / "ray.io_rayjobs.yaml"


@pytest.fixture
def plane_without_kuberay() -> Iterator[ControlPlane]:
    plane = ControlPlane(crd_paths=[FINETUNEJOB_CRD], with_kwok=False)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def test_missing_kuberay_is_a_condition_not_a_crash(plane_without_kuberay: ControlPlane, tmp_path: Path) -> None:
    plane = plane_without_kuberay
    with plane.api_client() as admin:
        kubernetes.client.CoreV1Api(admin).create_namespace({"metadata": {"name": "team"}})
        plane.wait_for(
            "default ServiceAccount",
            lambda: kubernetes.client.CoreV1Api(admin).read_namespaced_service_account("default", "team"),
        )
        cluster = Cluster(admin, "team")
        cluster.create_secret()
        with running_operator(plane, "team", tmp_path) as operator:
            cluster.apply(job_document())
            status = eventually("Pending", phase_is(cluster, "bert", "Pending"))
            launched = next(c for c in status["conditions"] if c["type"] == "Launched")
            assert launched["reason"] == "KubeRayMissing" and "install the KubeRay operator" in launched["message"]
            cluster.has_events("bert", ("Warning", "KubeRayMissing"))
            assert operator.process is not None and operator.process.poll() is None

            plane.install_crds([RAYJOB_CRD])
            # The CRD is Established, but the API server may serve its resource a moment later (404 until then).
            plane.wait_for("RayJobs served", lambda: cluster.rayjobs("bert") is not None)
            eventually("RayJob once KubeRay is there", lambda: cluster.rayjobs("bert"), timeout=30)
