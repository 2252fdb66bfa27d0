"""Real KubeRay on the test control plane: v1.6.2's operator (built by hack/build-kuberay.sh from the same Go
module as its image) reconciles the RayJob edgetune's operator renders for each cluster example. KubeRay's own
reconcile must produce the RayCluster and place the head and every worker on the intended KWOK nodes (the GPU
pool, never the tainted edge nodes). With no Ray behind KWOK's pods KubeRay then fails the RayJob, and the
FineTuneJob must say why in words, and retry.

KubeRay watches only this test's namespace: every other test keeps playing KubeRay's statuses by hand without
a controller fighting it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from ftjcluster import Cluster, eventually
from kubeenv import EDGE_LABEL, REPO_ROOT, ControlPlane, edgetune_cache, free_ports
from kubernetes.client.exceptions import ApiException
from operatorproc import OperatorProcess

from edgetune_operator.views import KUBERAY_FAILURES

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]
KUBERAY_VERSION = "v1.6.2"  # hack/images/versions.sh
BUILD_SCRIPT = "hack/build-kuberay.sh"
GPU_LABEL = "nvidia.com/gpu.present"
ENFORCE = "pod-security.kubernetes.io/enforce"


def kuberay_home() -> Path:
    """Where hack/build-kuberay.sh keeps the operator and its CRDs (keep in sync with that script)."""
    return edgetune_cache("EDGETUNE_KUBERAY_CACHE", "kuberay", KUBERAY_VERSION)


def install_missing_crds(api: kubernetes.client.ApiClient, crd_dir: Path) -> None:
    """KubeRay's controllers need every ray.io CRD; the session already has v1.7.0's RayJob and RayCluster
    (the newest schema, which the other tests validate against), so only the others are added."""
    extensions = kubernetes.client.ApiextensionsV1Api(api)
    present = {crd.metadata.name for crd in extensions.list_custom_resource_definition().items}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        if name in present:
            continue
        try:
            extensions.create_custom_resource_definition(crd)
        except ApiException as err:
            if err.status != 409:
                raise

        def established(name: str = name) -> bool:
            conditions = extensions.read_custom_resource_definition(name).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        eventually(f"CRD {name} established", established)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def kuberay(
    control_plane: ControlPlane, kube_api: kubernetes.client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[Path]:
    home = kuberay_home()
    binary = home / "bin" / "kuberay-operator"
    if not binary.is_file():
        pytest.fail(f"{binary} not found: build it once with `{BUILD_SCRIPT}` (a few minutes)", pytrace=False)
    install_missing_crds(kube_api, home / "crds")
    metrics_port, probe_port = free_ports(2)
    log = tmp_path / "kuberay.log"
    process = subprocess.Popen(
        [str(binary), f"--watch-namespace={namespace}", f"--metrics-addr=127.0.0.1:{metrics_port}",
         f"--health-probe-bind-address=127.0.0.1:{probe_port}", "--enable-leader-election=false",
         "--log-stdout-encoder=console"],
        env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        eventually("KubeRay healthy", lambda: process.poll() is not None or healthy(probe_port), timeout=60)
        assert process.poll() is None, log.read_text()[-3000:]
        yield log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def example(name: str) -> dict[str, Any]:
    document = yaml.safe_load((REPO_ROOT / "examples" / f"{name}.yaml").read_text())
    document["metadata"] = {"name": name}
    return document


NUDGE_SECONDS = 5.0


def nudge(cluster: Cluster, rayjob: str) -> None:
    """Touch a RayJob (an annotation) so that KubeRay reconciles it now.

    With no Ray behind KWOK's head pod, each RayJob reconcile ends in an error (the head's dashboard does not
    resolve), and controller-runtime requeues it with its per-object backoff: 5 ms doubling up to 1,000 s.
    The event that ends the wait, KWOK completing the submitter Job, can come early, and KubeRay fails the
    attempt 30 s after that only on its next reconcile, which the grown backoff may put minutes away (seen
    here: nothing for 4 minutes). An update event is queued at once, whatever the backoff, so this brings
    that reconcile forward; what KubeRay then decides is its own.
    """
    try:
        cluster.custom.patch_namespaced_custom_object(
            "ray.io", "v1", cluster.namespace, "rayjobs", rayjob,
            {"metadata": {"annotations": {"test.edgetune.dev/nudge": str(time.monotonic_ns())}}},
        )  # fmt: skip
    except ApiException as err:
        if err.status != 404:
            raise


def ray_pods(cluster: Cluster, raycluster: str) -> list[Any]:
    return cluster.core.list_namespaced_pod(cluster.namespace, label_selector=f"ray.io/cluster={raycluster}").items


@pytest.mark.parametrize("name", ["bert-imdb", "resnet-cifar10"])
def test_kuberay_places_the_rendered_ray_cluster_on_the_gpu_pool(
    name: str, kuberay: Path, operator: OperatorProcess, cluster: Cluster
) -> None:
    # The pods KubeRay builds from the rendered templates (its env, init container and ports added) must be
    # admitted under the restricted profile: a refused pod would never appear below.
    cluster.core.patch_namespace(cluster.namespace, {"metadata": {"labels": {ENFORCE: "restricted"}}})
    cluster.create_secret()
    document = example(name)
    cluster.apply(document)
    rayjob = eventually("RayJob", lambda: cluster.rayjobs(name))[0]

    def raycluster() -> dict[str, Any] | None:
        items = cluster.custom.list_namespaced_custom_object("ray.io", "v1", cluster.namespace, "rayclusters")
        owned = [
            c
            for c in items["items"]
            if any(o["uid"] == rayjob["metadata"]["uid"] for o in c["metadata"].get("ownerReferences", []))
        ]
        return owned[0] if owned else None

    made = eventually("KubeRay's RayCluster", raycluster, timeout=60)
    workers = document["spec"]["resources"]["workers"]
    assert made["spec"]["workerGroupSpecs"][0]["replicas"] == workers

    def placed() -> list[Any] | None:
        pods = ray_pods(cluster, made["metadata"]["name"])
        return pods if len(pods) == 1 + workers and all(p.spec.node_name for p in pods) else None

    pods = eventually(f"head and {workers} workers placed", placed, timeout=90)
    kinds = sorted(p.metadata.labels["ray.io/node-type"] for p in pods)
    assert kinds == ["head"] + ["worker"] * workers
    for pod in pods:
        labels = cluster.core.read_node(pod.spec.node_name).metadata.labels
        assert labels.get(GPU_LABEL) == "true" and EDGE_LABEL not in labels, (pod.metadata.name, labels)
        assert_no_port_clash(pod.spec.containers[0])
        env = {e.name: e for e in pod.spec.containers[0].env}  # KubeRay's authOptions, from our Secret
        assert env["RAY_AUTH_MODE"].value == "token", pod.metadata.name
        assert env["RAY_AUTH_TOKEN"].value_from.secret_key_ref.name == f"{rayjob['metadata']['name']}-ray-auth"

    def submitter() -> list[Any]:
        return cluster.core.list_namespaced_pod(
            cluster.namespace, label_selector=f"edgetune.dev/job={name},edgetune.dev/component=submitter"
        ).items

    # KubeRay submits once KWOK reports the head running; the Job controller's pod is admitted too.
    (pod,) = eventually("the submitter's pod", submitter, timeout=120)
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["RAY_AUTH_TOKEN"].value_from.secret_key_ref.name == f"{rayjob['metadata']['name']}-ray-auth"


def assert_no_port_clash(container: Any) -> None:
    """The ports KubeRay adds (and gives `ray start`) and the trainer's own metrics port must all differ: on
    kind, rank 0's endpoint found 8080 taken by Ray's metrics exporter and served nothing."""
    ports = container.ports or []
    assert len({p.container_port for p in ports}) == len(ports), ports
    assert len({p.name for p in ports}) == len(ports), ports
    command = " ".join([*(container.command or []), *(container.args or [])])
    ray_ports = {int(port) for port in re.findall(r"--[a-z-]*port=(\d+)", command)}
    ours = next((int(e.value) for e in container.env or [] if e.name == "EDGETUNE_METRICS_PORT"), None)
    assert ray_ports and ours not in ray_ports, (ours, command)


def test_kuberay_failing_the_attempt_reads_as_a_reason_and_a_retry(
    kuberay: Path, operator: OperatorProcess, cluster: Cluster
) -> None:
    """KWOK's pods run no Ray: KubeRay fails attempt 1 with one of its reasons, which the job explains."""
    cluster.create_secret()
    document = example("bert-imdb")
    document["spec"]["runPolicy"] = {"backoffLimit": 1}
    cluster.apply(document)

    last_nudge = [0.0]

    def failed_attempt() -> dict[str, Any] | None:
        first = next((r for r in cluster.rayjobs("bert-imdb") if r["metadata"]["name"] == "bert-imdb-a1"), {})
        status = first.get("status") or {}
        if status.get("jobDeploymentStatus") == "Failed":
            return status
        if first and time.monotonic() - last_nudge[0] > NUDGE_SECONDS:
            nudge(cluster, "bert-imdb-a1")
            last_nudge[0] = time.monotonic()
        return None

    first = eventually("KubeRay fails attempt 1", failed_attempt, timeout=240)
    assert first.get("reason") in KUBERAY_FAILURES, first  # a reason the operator knows
    meaning = KUBERAY_FAILURES[first["reason"]].meaning
    cluster.has_events("bert-imdb", ("Warning", "AttemptFailed"))
    events = cluster.core.list_namespaced_event(cluster.namespace, field_selector="involvedObject.name=bert-imdb")
    failure = next(e.message for e in events.items if e.reason == "AttemptFailed")
    assert meaning in failure and first["reason"] in failure, failure
    eventually("attempt 2", lambda: cluster.status("bert-imdb").get("attempt") == 2)
