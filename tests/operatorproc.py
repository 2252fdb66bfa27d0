"""Run `edgetune-operator` as a subprocess with a ServiceAccount identity bound to only the chart's rules."""

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

import kubernetes.client
from kubeenv import ControlPlane, free_ports
from kubernetes.client.exceptions import ApiException

from edgetune_operator.rbac import operator_rules

OPERATOR_NAMESPACE = "edgetune-system"
OPERATOR_ACCOUNT = "edgetune-operator"


def _create(call: object, *args: object) -> None:
    try:
        call(*args)  # type: ignore[operator]
    except ApiException as err:
        if err.status != 409:
            raise


def grant_operator(admin: kubernetes.client.ApiClient, namespace: str) -> None:
    """The chart's namespaced install: a Role with `operator_rules()` in `namespace`, bound to the SA."""
    core = kubernetes.client.CoreV1Api(admin)
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    _create(core.create_namespace, {"metadata": {"name": OPERATOR_NAMESPACE}})
    _create(core.create_namespaced_service_account, OPERATOR_NAMESPACE, {"metadata": {"name": OPERATOR_ACCOUNT}})
    _create(
        rbac.create_namespaced_role, namespace, {"metadata": {"name": "edgetune-operator"}, "rules": operator_rules()}
    )
    _create(
        rbac.create_namespaced_role_binding,
        namespace,
        {
            "metadata": {"name": "edgetune-operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edgetune-operator"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
        },
    )


class OperatorProcess:
    """One operator process; `restart()` kills it (SIGKILL, as a node loss would) and starts another."""

    def __init__(self, plane: ControlPlane, namespace: str, log_dir: Path, *extra: str) -> None:
        self.kubeconfig = plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, create=False)
        self.namespace = namespace
        self.log_dir = log_dir
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = self.health_port = 0
        self.starts = 0

    def start(self, wait: bool = True) -> OperatorProcess:
        self.metrics_port, self.health_port = free_ports(2)
        self.starts += 1
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        command = [
            sys.executable, "-m", "edgetune_operator.main",
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace,
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
            "--resync-seconds", "3",
            "--trainer-image", "registry.test/edgetune-trainer:0.1.0",
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
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
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


@contextmanager
def running_operator(plane: ControlPlane, namespace: str, log_dir: Path, *extra: str) -> Iterator[OperatorProcess]:
    with plane.api_client() as admin:
        grant_operator(admin, namespace)
    operator = OperatorProcess(plane, namespace, log_dir, *extra).start()
    try:
        yield operator
    finally:
        operator.stop()
