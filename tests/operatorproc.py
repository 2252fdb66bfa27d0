"""Run `edgetune-operator` as a subprocess with the chart's ServiceAccount identity and the chart's RBAC.

`grant_operator` applies what `helm template` renders for the chart's ServiceAccount and Role(s), so every
control-plane test proves that the chart grants enough (the `operator` fixture fails on any 403).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes.client
from ftjcluster import wait_allowed
from helmtool import kubectl_apply, template
from kubeenv import ControlPlane, free_ports
from kubernetes.client.exceptions import ApiException

from edgetune_operator.rbac import operator_rules

OPERATOR_NAMESPACE = "edgetune-system"  # the release namespace of `helm install edgetune`
OPERATOR_ACCOUNT = "edgetune-operator"  # the chart's ServiceAccount for release "edgetune"
LEASE_NAME = "edgetune-leader"


def grant_operator(plane: ControlPlane, namespace: str, values: dict[str, Any] | None = None) -> None:
    """The chart's ServiceAccount and RBAC for a release watching `namespace` (plus any other `values`)."""
    with plane.api_client() as admin:
        try:
            kubernetes.client.CoreV1Api(admin).create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
        except ApiException as err:
            if err.status != 409:
                raise
    documents = template(
        {"watch": {"namespaces": [namespace]}, **(values or {})},
        namespace=OPERATOR_NAMESPACE,
        show_only=("templates/serviceaccount.yaml", "templates/rbac.yaml"),
    )
    assert {d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"} == {OPERATOR_ACCOUNT}
    kubectl_apply(plane.kubeconfig, documents)
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
    checks = [
        (verb, group, resource, namespace, "")
        for rule in operator_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]
    with plane.api_client() as admin:
        wait_allowed(admin, user, checks)


class OperatorProcess:
    """One operator process; `restart()` kills it (SIGKILL, as a node loss would) and starts another."""

    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        log_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        """`launcher`: what `python` runs instead of `-m edgetune_operator.main` (a script taking the
        operator's arguments after its own: bench/traced_operator.py)."""
        self.kubeconfig = plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, create=False)
        self.namespace = namespace
        self.log_dir = log_dir
        self.extra = extra
        self.env = {**os.environ, **(env or {})}
        self.log_prefix = self.env.get("POD_NAME", "operator")
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = self.health_port = 0
        self.starts = 0
        self.launcher = launcher or ["-m", "edgetune_operator.main"]

    def start(self, wait: bool = True) -> OperatorProcess:
        self.metrics_port, self.health_port = free_ports(2)
        self.starts += 1
        log = (self.log_dir / f"{self.log_prefix}-{self.starts}.log").open("wb")
        command = [
            sys.executable, *self.launcher,
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace,
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
            "--resync-seconds", "3",
            "--trainer-image", "registry.test/edgetune-trainer:0.1.0",
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"operator not healthy after {timeout} s:\n{self.log_text()[-3000:]}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def snapshot(self, label: str, timeout: float = 120.0) -> Path:
        """bench/traced_operator.py only: a tracemalloc snapshot, written beside the requests."""
        folder = Path(self.launcher[1])
        path = folder / f"{label}.snapshot"
        (folder / "request").write_text(str(path))
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not Path(f"{path}.done").exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no tracemalloc snapshot after {timeout} s:\n{self.log_text()[-2000:]}")
            time.sleep(0.2)
        return path

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        logs = sorted(self.log_dir.glob(f"{self.log_prefix}-*.log"))
        return "\n".join(p.read_text(errors="replace") for p in logs)


@contextmanager
def running_operator(plane: ControlPlane, namespace: str, log_dir: Path, *extra: str) -> Iterator[OperatorProcess]:
    grant_operator(plane, namespace)
    operator = OperatorProcess(plane, namespace, log_dir, *extra).start()
    try:
        yield operator
    finally:
        operator.stop()
