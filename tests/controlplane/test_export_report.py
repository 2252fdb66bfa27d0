"""An export pod's report (its termination message) reaches the FineTuneJob's status, through the real
API server: the pod is owned by the export Job, not by the FineTuneJob, and must still count."""

from __future__ import annotations

import json

import pytest
from ftjcluster import Cluster, eventually, job_document

from edgetune_operator.reconciler import Reconciler

pytestmark = pytest.mark.controlplane


def test_the_export_pods_report_is_recorded_in_status(reconciler: Reconciler, cluster: Cluster) -> None:
    cluster.create_secret()
    cluster.apply(job_document("bert"))
    reconciler.reconcile(cluster.namespace, "bert")
    cluster.play_kuberay("bert-a1", "Complete", "SUCCEEDED")
    reconciler.reconcile(cluster.namespace, "bert")  # creates the export Job; KWOK runs its pod

    def finished_pod() -> str | None:
        pods = cluster.core.list_namespaced_pod(cluster.namespace, label_selector="job-name=bert-export-edge-int8")
        done = [p for p in pods.items if p.status.phase == "Succeeded"]
        return done[0].metadata.name if done else None

    pod = eventually("export pod Succeeded", finished_pod, timeout=60)
    # What `edgetune-export --status-file /dev/termination-log` leaves: KWOK runs no container, so the
    # test writes the kubelet's part.
    report = {"uri": "s3://edgetune/jobs/x/bert/exports/edge-int8", "sizeBytes": 1234, "latencyMs": 2.5,
              "accuracyDrop": 0.3, "message": "int8, 0.26x"}  # fmt: skip
    terminated = {"exitCode": 0, "reason": "Completed", "message": json.dumps(report)}
    container = {"name": "export", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
                 "state": {"terminated": terminated}}  # fmt: skip
    cluster.core.patch_namespaced_pod_status(pod, cluster.namespace, {"status": {"containerStatuses": [container]}})

    def recorded() -> dict | None:
        reconciler.reconcile(cluster.namespace, "bert")
        exports = cluster.status("bert").get("exports") or []
        return exports[0] if exports and exports[0]["phase"] == "Succeeded" else None

    export = eventually("export recorded", recorded, timeout=60)
    assert export["uri"] == report["uri"] and export["sizeBytes"] == 1234 and export["message"] == "int8, 0.26x"
