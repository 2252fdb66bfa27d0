"""Run a RayJob the operator rendered into the real API server as KubeRay would, with local Ray: the Ray nodes
its rayClusterSpec describes, the attempt's token from its Secret, and `ray job submit` of its entrypoint with
the ConfigMap mounted and the Secret references resolved (the test plays the kubelet). Used by
tests/controlplane/test_bridge.py and by the observability test that scrapes a real training run."""

from __future__ import annotations

import base64
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import kubernetes.client
from ftjcluster import Cluster, eventually
from kubeenv import ControlPlane
from s3server import CREDENTIALS, S3Server, free_port

from edgetune_operator.identity import LABEL_JOB
from edgetune_operator.render import CONFIG_DIR

BIN = Path(sys.executable).parent


def upload_folder(s3: S3Server, bucket: str, folder: Path, prefix: str) -> None:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


def stage_inputs(s3: S3Server, bucket: str, cluster: Cluster, model: Path, data: Path) -> None:
    """What a job reads, where its spec says: the model at models/tiny-bert/, the data file's folder at data/,
    and the S3 credentials as the Secret `s3` in the job's namespace."""
    upload_folder(s3, bucket, model, "models/tiny-bert")
    upload_folder(s3, bucket, data.parent, "data")
    secret = {k: base64.b64encode(v.encode()).decode() for k, v in CREDENTIALS.items()}
    cluster.core.create_namespaced_secret(cluster.namespace, {"metadata": {"name": "s3"}, "data": secret})


def resolve_env(container: dict, core: kubernetes.client.CoreV1Api, namespace: str) -> dict[str, str]:
    """What the kubelet does with env: plain values as they are, secretKeyRef read from the Secret."""
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            secret = core.read_namespaced_secret(ref["name"], namespace)
            env[entry["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
    return env


def run_rayjob_locally(
    control_plane: ControlPlane,
    cluster: Cluster,
    rayjob: dict,
    tmp_path: Path,
    *,
    metrics_port: int = 0,
    check_token_refusal: bool = True,
) -> None:
    """Train to the end; `metrics_port` is where rank 0 serves its metrics (0: not at all)."""
    namespace = cluster.namespace
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    container = head["containers"][0]
    config_map = cluster.core.read_namespaced_config_map(head["volumes"][0]["configMap"]["name"], namespace)
    mount = tmp_path / "mount"
    mount.mkdir()
    for key, value in config_map.data.items():
        (mount / key).write_text(value)
    token = mount / "token"
    token.write_text(control_plane.service_account_token(namespace, head["serviceAccountName"], create=False))
    env_vars = resolve_env(container, cluster.core, namespace)
    env_vars.update(
        EDGETUNE_KUBE_API=control_plane.server,
        EDGETUNE_KUBE_TOKEN_FILE=str(token),
        EDGETUNE_KUBE_CA_FILE=str(control_plane.pki.ca_cert),
        EDGETUNE_METRICS_PORT=str(metrics_port),
    )
    argv = [arg.replace(CONFIG_DIR, str(mount)) for arg in shlex.split(rayjob["spec"]["entrypoint"])]

    dashboard = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_AUTH"))}  # only what KubeRay gives
    env["PATH"] = f"{BIN}:{env['PATH']}"
    # What KubeRay puts in every Ray container and the submitter for authOptions: the mode, and the token
    # from the Secret the operator created for this attempt.
    auth = rayjob["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token"
    ray_token = resolve_env(
        {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": auth["secretName"], "key": "auth_token"}}}]},
        cluster.core,
        namespace,
    )["T"]
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_token)
    ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    gcs_port = free_port()
    nodes: list[subprocess.Popen] = []

    def start_node(name: str, *args: str) -> None:
        """`ray start --block`, waited for: nodes started all at once on 2 cores time out registering."""
        log_path = tmp_path / f"{name}.log"
        node = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        nodes.append(node)
        eventually(name, lambda: node.poll() is not None or "Ray runtime started" in log_path.read_text(), 120)
        assert node.poll() is None, log_path.read_text()[-3000:]

    # The Ray cluster KubeRay would start from this RayJob: the head with its rayStartParams, then each
    # worker group's replicas, each a Ray node with the CPUs KubeRay derives from the container's limit.
    cluster_spec = rayjob["spec"]["rayClusterSpec"]
    head_params = cluster_spec["headGroupSpec"]["rayStartParams"]
    start_node(
        "ray-head", "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard}", "--include-dashboard=true",
        f"--num-cpus={head_params['num-cpus']}", f"--temp-dir={ray_temp}",
    )  # fmt: skip
    try:
        address = f"http://127.0.0.1:{dashboard}"
        eventually("Ray dashboard", lambda: nodes[0].poll() is not None or _reachable(address), timeout=90)
        if check_token_refusal:
            assert_refused_without_the_token(address, f"127.0.0.1:{gcs_port}", ray_token, tmp_path)
        for group in cluster_spec["workerGroupSpecs"]:
            limit = group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
            for replica in range(group["replicas"]):
                start_node(
                    f"ray-{group['groupName']}-{replica}", f"--address=127.0.0.1:{gcs_port}",
                    f"--num-cpus={math.ceil(float(limit))}",  # KubeRay rounds the limit up
                )  # fmt: skip
        for _ in range(30):  # the head's job agent registers a few seconds after the dashboard answers
            submit = subprocess.run(
                [str(BIN / "ray"), "job", "submit", f"--address={address}",
                 f"--runtime-env-json={json.dumps({'env_vars': env_vars})}", "--", *argv],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if "No available agent" not in submit.stderr + submit.stdout:
                break
            time.sleep(2)
        assert submit.returncode == 0, submit.stdout[-5000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout.lower(), submit.stdout[-3000:]

        # One training worker per Ray worker node, as one per worker pod on KubeRay, so that DDP crosses the
        # pod network. (Ray Train's own node_rank groups by IP, and here every node has the same IP: ask
        # Ray's state API on which node each training worker actor ran.)
        def ray_list(kind: str, *filters: str) -> list[dict]:
            listed = subprocess.run(
                [str(BIN / "ray"), "list", kind, f"--address={address}", *[f"--filter={f}" for f in filters],
                 "--detail", "--format=json", "--limit=100"],
                env=env, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            return json.loads(listed.stdout)

        worker_nodes = [actor["node_id"] for actor in ray_list("actors", "class_name=RayTrainWorker")]
        assert len(worker_nodes) == 2 and len(set(worker_nodes)) == 2, worker_nodes
        # The progress queue lives with the driver on the head, so losing a worker pod cannot take it along
        # (on kind it had gone to a worker pod, and every restart after that pod's loss failed on it).
        (head,) = [node["node_id"] for node in ray_list("nodes") if node["is_head_node"]]
        assert [actor["node_id"] for actor in ray_list("actors", "class_name=_QueueActor")] == [head]
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
        for node in reversed(nodes):
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(ray_temp, ignore_errors=True)
    # The reporter's last patch follows the final event: give the API a moment.
    job = rayjob["metadata"]["labels"][LABEL_JOB]
    eventually("final progress", lambda: (cluster.status(job).get("progress") or {}).get("percent") == 100, 10)


def _status_of(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def assert_refused_without_the_token(dashboard: str, gcs: str, token: str, tmp_path: Path) -> None:
    """Ray itself refuses a client without the attempt's token: the dashboard's job API (what a submitter
    uses) and the GCS (what a driver connects to)."""
    jobs = f"{dashboard}/api/jobs/"
    assert _status_of(jobs, token) == 200
    assert _status_of(jobs, None) == 401
    assert _status_of(jobs, "not-" + token) == 403
    client = tmp_path / "no_token_client.py"
    client.write_text(
        "import ray\n"
        "try:\n"
        f"    ray.init(address={gcs!r})\n"
        "except ConnectionError as err:\n"
        "    raise SystemExit(f'refused: {err}')\n"
        "print('connected')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    attempt = subprocess.run(
        [sys.executable, str(client)], env=env, capture_output=True, text=True, timeout=120
    )  # ~20 s: the client retries before giving up
    output = attempt.stdout + attempt.stderr
    assert attempt.returncode != 0 and "refused" in output, output[-3000:]
    assert "Authentication token is missing or incorrect" in output, output[-3000:]


def _reachable(url: str) -> bool:
    """Any HTTP answer (Ray 2.59 answers 401 without its auth token; `ray job submit` brings it)."""
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        time.sleep(0.5)
        return False
