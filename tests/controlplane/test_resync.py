"""Which jobs a resync sweep reconciles, on the real API server: the in-process Reconciler
(tests/inprocess.py) with the chart's identity, playing KubeRay by patching RayJob status."""

from __future__ import annotations

import pytest
from ftjcluster import GROUP, PLURAL, VERSION, Cluster, job_document

from edgetune_operator.reconciler import Reconciler

pytestmark = pytest.mark.controlplane


def test_a_sweep_reconciles_what_waits_or_changed_and_in_turn_a_tenth_of_the_rest(
    reconciler: Reconciler, cluster: Cluster
) -> None:
    cluster.create_secret()
    for name in ("settled", "edited"):
        cluster.apply(job_document(name))
    cluster.apply(job_document("deadline", activeDeadlineSeconds=3600))
    cluster.apply(job_document("far-deadline", activeDeadlineSeconds=86400))
    waiting = job_document("waiting")
    waiting["spec"]["storage"]["credentialsSecret"] = "not-yet"
    cluster.apply(waiting)
    for name in ("settled", "edited", "deadline", "far-deadline", "waiting"):
        reconciler.reconcile(cluster.namespace, name)
    for name in ("settled", "edited", "deadline", "far-deadline"):
        cluster.play_kuberay(f"{name}-a1", "Running", "RUNNING")
        reconciler.reconcile(cluster.namespace, name)  # the RayJob's event: Running
    assert cluster.status("settled")["phase"] == "Running" and cluster.status("waiting")["phase"] == "Pending"
    # Someone else writes a field the operator owns: that job is no longer as its last reconcile left it.
    patch = {"status": {"rayJobName": "edited-by-hand"}}
    cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, cluster.namespace, PLURAL, "edited", patch)
    # A progress report alone changes nothing a decision reads.
    patch = {"status": {"progress": {"step": 3, "totalSteps": 10, "epoch": 0}}}
    cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, cluster.namespace, PLURAL, "settled", patch)

    # Sweeps 3,600 s apart: the one-hour deadline passes before the next one, the one-day deadline does not.
    def due(sweep: int, interval: float = 3600) -> set[str]:
        now, in_turn = reconciler.due_for_resync(cluster.namespace, sweep, interval)
        assert not {name for _, name in now} & {"settled", "far-deadline"}, now  # never urgent: only in turn
        return {name for _, name in [*now, *in_turn]}

    sweeps = [due(sweep) for sweep in range(10)]
    always = {"edited", "deadline", "waiting"}
    assert all(always <= found for found in sweeps), sweeps
    for name in ("settled", "far-deadline"):
        assert sum(name in found for found in sweeps) == 1, sweeps  # its turn comes once in ten sweeps
    # With sweeps a minute apart, the hour-long deadline is not near yet: that job waits for its turn too.
    assert sum("deadline" in due(sweep, interval=60) for sweep in range(10)) == 1
    reconciler.reconcile(cluster.namespace, "edited")  # the edit's event: the operator puts its field back
    assert cluster.status("edited")["rayJobName"] == "edited-a1"
    after = [due(sweep) for sweep in range(10)]
    assert sum("edited" in due for due in after) == 1, after  # settled again: only its turn
