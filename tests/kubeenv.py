"""A real Kubernetes control plane for tests, without Docker (envtest style).

`ControlPlane` starts etcd, kube-apiserver and, optionally, kube-controller-manager,
kube-scheduler and KWOK (fake nodes that "run" pods) as local processes on loopback
ports, with their files in one temporary folder, and tears them down again. The binaries are built
once by `hack/build-k8s.sh`; they are looked up in `$KUBEBUILDER_ASSETS` first (the
envtest convention), then in the cache that script fills.

    with ControlPlane(crd_paths=[...]) as cp:
        api = kubernetes.client.CoreV1Api(cp.api_client())
        sa = cp.service_account_client("ns", "operator")   # acts as that ServiceAccount
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import kubernetes.client
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.client.rest import ApiException

K8S_VERSION = "v1.35.4"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kwok")
REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = "hack/build-k8s.sh"

# kubeadm's defaults; the pod range only feeds the IPs KWOK hands out.
SERVICE_CIDR = "10.96.0.0/12"
POD_CIDR = "10.244.0.1/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
EDGE_LABEL = "edgetune.dev/edge"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or used."""


# --------------------------------------------------------------------------- binaries


def edgetune_cache(override_variable: str, *parts: str) -> Path:
    """`$<override_variable>`, else `$XDG_CACHE_HOME/edgetune/<parts>` (the hack/ scripts' convention)."""
    if env := os.environ.get(override_variable):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg, "edgetune", *parts)


def cache_dir() -> Path:
    """Where hack/build-k8s.sh puts the binaries (keep in sync with that script)."""
    return edgetune_cache("EDGETUNE_K8S_CACHE", "k8s", K8S_VERSION)


def find_binary(name: str) -> Path:
    """`$KUBEBUILDER_ASSETS/<name>`, else the build cache; a clear error when neither has it."""
    candidates = []
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(assets) / name)
    candidates.append(cache_dir() / "bin" / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise ControlPlaneError(
        f"{name} not found (looked in {looked}). Build the test control plane once with "
        f"`{BUILD_SCRIPT}` (from the Go module proxy, a few minutes), or point "
        "KUBEBUILDER_ASSETS at a folder holding the binaries."
    )


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """Files of the cluster's PKI, all in one folder."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 rather than RSA: generating it is instant, and every component accepts it.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usages = {"key_cert_sign": True, "crl_sign": True, "digital_signature": True}
    else:
        usages = {"key_cert_sign": False, "crl_sign": False, "digital_signature": True}
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
            **usages,
        ),
        critical=True,
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def make_pki(folder: Path) -> Pki:
    """A CA, the apiserver's serving cert, an admin client cert and the SA signing key."""
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key, ca_name = _new_key(), _name("edgetune-test-ca")
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)

    first_service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans = [x509.DNSName(d) for d in dns] + [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(first_service_ip),
    ]
    serving_key = _new_key()
    serving = _issue(
        _name("kube-apiserver"),
        serving_key,
        ca_name,
        ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )

    # The admin identity is a client certificate in group system:masters, the
    # group the apiserver authorizes before RBAC is even consulted. A client cert
    # rather than --token-auth-file: it is the credential kubeadm hands the admin
    # (super-admin.conf), x509 client auth is on in every real cluster while static
    # token files rarely are, and so the only authenticators the tests exercise
    # are the real ones: x509 and ServiceAccount tokens.
    admin_key = _new_key()
    admin = _issue(
        _name("edgetune-test-admin", "system:masters"),
        admin_key,
        ca_name,
        ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )

    pki = Pki(
        ca_cert=folder / "ca.crt",
        ca_key=folder / "ca.key",
        serving_cert=folder / "apiserver.crt",
        serving_key=folder / "apiserver.key",
        admin_cert=folder / "admin.crt",
        admin_key=folder / "admin.key",
        sa_key=folder / "sa.key",
        sa_pub=folder / "sa.pub",
    )
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    _write_key(pki.ca_key, ca_key)
    pki.serving_cert.write_bytes(serving.public_bytes(pem))
    _write_key(pki.serving_key, serving_key)
    pki.admin_cert.write_bytes(admin.public_bytes(pem))
    _write_key(pki.admin_key, admin_key)

    sa_key = _new_key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


# --------------------------------------------------------------------------- processes


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all sockets held open until every port is picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


# Looked up in the parent: the child, between fork and exec, should only call it.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the starting thread dies.

    The last line of defence when pytest itself is SIGKILLed and neither atexit
    nor a signal handler gets to run.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Process:
    """A started binary, in its own process group, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
        log_path = workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Only tie the child's life to the starting thread when that thread is the
        # main one: PR_SET_PDEATHSIG fires when the *thread* exits.
        on_main = threading.current_thread() is threading.main_thread()
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(args),
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: stop() signals the whole group, and a Ctrl-C
                # in the terminal reaches pytest only, which then tears down in order.
                start_new_session=True,
                preexec_fn=_die_with_parent if on_main and _PRCTL is not None else None,
            )
        return cls(name, popen, log_path)

    def exited(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        if self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


# --------------------------------------------------------------------------- cleanup

_LIVE: set[ControlPlane] = set()  # started and not yet stopped
_HANDLERS_INSTALLED = False


def _stop_all() -> None:
    for plane in list(_LIVE):
        plane.stop()


def _on_termination(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into what Ctrl-C does: pytest stops the session and runs
    # fixture teardown, and a plain script unwinds through its `with` blocks.
    raise KeyboardInterrupt(f"signal {signum}")


def _install_cleanup() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # Leave handlers someone else installed alone.
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _on_termination)


# --------------------------------------------------------------------------- nodes


def _node(
    name: str,
    *,
    labels: dict[str, str],
    capacity: dict[str, str],
    arch: str,
    taints: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # KWOK only manages nodes with this annotation (--manage-nodes-with-annotation-selector).
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                **labels,
            },
        },
        "spec": {"taints": list(taints)},
        # Nodes accept status on create; KWOK's node-initialize stage keeps these
        # capacities and adds the Ready condition.
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "nodeInfo": {
                "architecture": arch,
                "operatingSystem": "linux",
                "kubeletVersion": K8S_VERSION,
                "kubeProxyVersion": K8S_VERSION,
                "containerRuntimeVersion": "kwok",
                "kernelVersion": "kwok",
                "osImage": "kwok",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        },
    }


def default_fake_nodes() -> list[dict[str, Any]]:
    """Two GPU nodes (8 GPUs each) and two tainted arm64 edge nodes."""
    gpu = {"cpu": "32", "memory": "256Gi", "pods": "110", GPU_RESOURCE: "8"}
    edge = {"cpu": "8", "memory": "16Gi", "pods": "110"}
    edge_taint = {"key": EDGE_LABEL, "value": "true", "effect": "NoSchedule"}
    nodes = [_node(f"gpu-{i}", labels={"nvidia.com/gpu.present": "true"}, capacity=gpu, arch="amd64") for i in range(2)]
    nodes += [
        _node(f"edge-{i}", labels={EDGE_LABEL: "true"}, capacity=edge, arch="arm64", taints=[edge_taint])
        for i in range(2)
    ]
    return nodes


def _node_ready(node: Any, *, untainted: bool) -> bool:
    conditions = (node.status and node.status.conditions) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    # The node lifecycle controller (in kube-controller-manager) lifts this taint
    # once the node is Ready; until then the scheduler will not place pods there.
    taints = node.spec.taints or []
    return ready and not (untainted and any(t.key == "node.kubernetes.io/not-ready" for t in taints))


# --------------------------------------------------------------------------- control plane


@dataclass(eq=False)  # identity hashing: started instances are kept in a set for atexit
class ControlPlane:
    """etcd + kube-apiserver (+ controller-manager, scheduler, KWOK nodes) on loopback.

    with_controllers: start kube-controller-manager (garbage collection of
        ownerReferences, Job controller, namespace deletion, default
        ServiceAccounts) and kube-scheduler.
    with_kwok: start KWOK and create `nodes` (default: 2 GPU + 2 edge nodes) so
        pods get scheduled, become Running, and Job pods Succeeded.
    crd_paths: YAML files whose CustomResourceDefinitions are installed and
        waited on until Established.
    """

    with_controllers: bool = True
    with_kwok: bool = True
    crd_paths: Sequence[Path | str] = ()
    nodes: Sequence[dict[str, Any]] | None = None
    start_timeout: float = 120.0
    keep_workdir: bool = field(default_factory=lambda: bool(os.environ.get("EDGETUNE_K8S_KEEP")))

    workdir: Path = field(init=False)
    pki: Pki = field(init=False)
    server: str = field(init=False, default="")
    kubeconfig: Path = field(init=False)
    processes: list[Process] = field(init=False, default_factory=list)
    startup_seconds: float = field(init=False, default=0.0)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        binaries = self._binaries()  # fail before creating anything
        began = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="edgetune-k8s-"))
        _install_cleanup()
        _LIVE.add(self)
        try:
            self.pki = make_pki(self.workdir / "pki")
            etcd_url = self._start_etcd(binaries["etcd"])
            self._start_apiserver(binaries["kube-apiserver"], etcd_url)
            # CRDs before the controller-manager: its garbage collector learns
            # resource types from discovery at start and then only every 30s, so a
            # CRD installed later cannot own anything (for GC) until that resync.
            if self.crd_paths:
                self.install_crds(self.crd_paths)
            if self.with_controllers:
                self._start_controllers(binaries)
            if self.with_kwok:
                self._start_kwok(binaries["kwok"])
                self.create_nodes(default_fake_nodes() if self.nodes is None else self.nodes)
        except Exception:
            # Keep the folder: the logs named in the error are the way to debug it.
            self.stop(remove_workdir=False)
            raise
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): nothing to debug
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, *, remove_workdir: bool = True) -> None:
        """Stop every process, newest first, and remove the temp folder. Idempotent."""
        with self._lock:
            while self.processes:
                # Pop only once stopped: if a signal interrupts the wait, the
                # atexit pass still finds this process.
                self.processes[-1].stop()
                self.processes.pop()
            _LIVE.discard(self)
            workdir = getattr(self, "workdir", None)
            remove = remove_workdir and not self.keep_workdir
            if workdir is not None and workdir.exists() and remove:
                shutil.rmtree(workdir, ignore_errors=True)

    def _binaries(self) -> dict[str, Path]:
        needed = ["etcd", "kube-apiserver"]
        if self.with_controllers:
            needed += ["kube-controller-manager", "kube-scheduler"]
        if self.with_kwok:
            needed.append("kwok")
        return {name: find_binary(name) for name in needed}

    # ------------------------------------------------------------------ components

    def _spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Process:
        proc = Process.start(name, args, self.workdir, env)
        self.processes.append(proc)
        return proc

    def _start_etcd(self, binary: Path) -> str:
        (client_port,) = free_ports(1)
        url = f"http://127.0.0.1:{client_port}"
        proc = self._spawn(
            "etcd",
            [
                str(binary),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                # A single member never talks to peers: port 0 avoids picking (and
                # racing for) a second port, as envtest does.
                "--listen-peer-urls=http://127.0.0.1:0",
                # Test data is thrown away: skip fsync, it dominates etcd latency on CI disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_http("etcd", f"{url}/health", [proc], ssl_context=None)
        return url

    def _start_apiserver(self, binary: Path, etcd_url: str) -> None:
        (port,) = free_ports(1)
        self.server = f"https://127.0.0.1:{port}"
        pki = self.pki
        proc = self._spawn(
            "kube-apiserver",
            [
                str(binary),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                # RBAC only: Node authorization is for kubelets, and there are none.
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The `kubernetes` Service cannot point at a loopback address (the
                # Endpoints are rejected, logged every 10s): do not maintain it.
                "--endpoint-reconciler-type=none",
                # Admission plugins: the defaults of the release (ServiceAccount, quota,
                # LimitRanger, PodSecurity, webhooks, ...), as in a real cluster.
            ],
        )
        self.kubeconfig = self._write_kubeconfig(
            "admin", {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)}
        )
        self._wait_http("kube-apiserver", f"{self.server}/readyz", [proc], ssl_context=self._admin_ssl_context())

    def _start_controllers(self, binaries: dict[str, Path]) -> None:
        kcm_port, scheduler_port = free_ports(2)
        # Both run as the admin (system:masters) instead of their own identities:
        # they are test infrastructure, not what the tests are about.
        common = [
            f"--kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            # One instance each: skip the lease dance (and its delay on restarts).
            "--leader-elect=false",
        ]
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(binaries["kube-controller-manager"]),
                *common,
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                # --controllers defaults to "*": every controller enabled by default,
                # which includes garbage collection, job, namespace, serviceaccount.
                f"--service-account-private-key-file={self.pki.sa_key}",
                # Published as the kube-root-ca.crt ConfigMap in every namespace.
                f"--root-ca-file={self.pki.ca_cert}",
                # Lets CertificateSigningRequests be signed, should a test need one.
                f"--cluster-signing-cert-file={self.pki.ca_cert}",
                f"--cluster-signing-key-file={self.pki.ca_key}",
            ],
        )
        scheduler = self._spawn(
            "kube-scheduler",
            [
                str(binaries["kube-scheduler"]),
                *common,
                f"--secure-port={scheduler_port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
            ],
        )
        insecure = ssl._create_unverified_context()
        self._wait_http("kube-controller-manager", f"https://127.0.0.1:{kcm_port}/healthz", [kcm], ssl_context=insecure)
        self._wait_http(
            "kube-scheduler", f"https://127.0.0.1:{scheduler_port}/healthz", [scheduler], ssl_context=insecure
        )

    def _start_kwok(self, binary: Path) -> None:
        home = self.workdir / "kwok-home"
        home.mkdir()
        self._spawn(
            "kwok",
            [
                str(binary),
                f"--kubeconfig={self.kubeconfig}",
                # Only our fake nodes, never a real one that might share a kubeconfig.
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--manage-nodes-with-label-selector=",
                "--node-ip=127.0.0.1",
                f"--cidr={POD_CIDR}",
                # No --config and no Stage CRDs: kwok then uses its built-in stages,
                # node-initialize + node-heartbeat-with-lease for nodes and, for pods,
                # pod-ready (-> Running), pod-complete (Running -> Succeeded, only for
                # pods owned by a Job) and pod-delete. That is exactly what Jobs need.
            ],
            env={**os.environ, "HOME": str(home)},
        )  # kwok also reads ~/.kwok/kwok.yaml

    # ------------------------------------------------------------------ waiting

    def _wait(
        self,
        what: str,
        ready: Callable[[], bool],
        watched: Sequence[Process],
        timeout: float | None = None,
        tail_lines: int = 40,
    ) -> None:
        """Poll `ready` until true; fail early, with the log tail, if a process exits.

        Exceptions from `ready` count as "not yet"; the last one is in the timeout error.
        """
        timeout = timeout or self.start_timeout
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            for proc in watched or self.processes:
                if (code := proc.exited()) is not None:
                    raise ControlPlaneError(
                        f"{proc.name} exited with code {code} while waiting for {what}; "
                        f"log {proc.log_path}:\n{proc.log_tail(tail_lines)}"
                    )
            try:
                if ready():
                    return
            except Exception as exc:  # any failure means "not ready yet"
                last_error = exc
            if time.monotonic() > deadline:
                raise ControlPlaneError(self._timeout_message(what, timeout, last_error, watched, tail_lines))
            time.sleep(0.2)

    def _timeout_message(
        self, what: str, timeout: float, error: Exception | None, watched: Sequence[Process], tail_lines: int
    ) -> str:
        lines = [f"timed out after {timeout:.0f}s waiting for {what}"]
        if error is not None:
            lines.append(f"last error: {error!r}"[:2000])
        if not self.keep_workdir:
            lines.append("(set EDGETUNE_K8S_KEEP=1 to keep the logs after the session)")
        for proc in watched or self.processes:
            lines += [f"--- {proc.name} ({proc.log_path}):", proc.log_tail(tail_lines)]
        return "\n".join(lines)

    def _wait_http(self, what: str, url: str, watched: Sequence[Process], ssl_context: ssl.SSLContext | None) -> None:
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        opener = urllib.request.build_opener(*handlers)

        def ok() -> bool:
            with opener.open(url, timeout=5) as resp:
                return resp.status == 200

        self._wait(f"{what} ({url})", ok, watched)

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll `ready` (exceptions count as not ready) while checking no process died."""
        self._wait(what, ready, self.processes, timeout, tail_lines=10)

    # ------------------------------------------------------------------ clients

    def _admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def _configuration(self) -> kubernetes.client.Configuration:
        config = kubernetes.client.Configuration()
        config.host = self.server
        config.ssl_ca_cert = str(self.pki.ca_cert)
        config.verify_ssl = True
        return config

    def api_client(self) -> kubernetes.client.ApiClient:
        """A client acting as the cluster admin (group system:masters)."""
        config = self._configuration()
        config.cert_file = str(self.pki.admin_cert)
        config.key_file = str(self.pki.admin_key)
        return kubernetes.client.ApiClient(config)

    def service_account_token(
        self, namespace: str, name: str, *, create: bool = True, expiration_seconds: int = 12 * 3600
    ) -> str:
        """A bound token for ServiceAccount namespace/name, from the TokenRequest API.

        The same kind of token a pod's projected volume holds, so RBAC sees exactly
        `system:serviceaccount:<namespace>:<name>`.
        """
        with self.api_client() as admin:
            core = kubernetes.client.CoreV1Api(admin)
            if create:
                self._ensure_service_account(core, namespace, name)
            request = kubernetes.client.AuthenticationV1TokenRequest(
                spec=kubernetes.client.V1TokenRequestSpec(audiences=[SA_ISSUER], expiration_seconds=expiration_seconds)
            )
            response = core.create_namespaced_service_account_token(name, namespace, request)
            return str(response.status.token)

    @staticmethod
    def _ensure_service_account(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> None:
        body = {"metadata": {"name": name}}
        try:
            core.create_namespaced_service_account(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def service_account_client(self, namespace: str, name: str, *, create: bool = True) -> kubernetes.client.ApiClient:
        """A client authenticating as system:serviceaccount:<namespace>:<name>."""
        config = self._configuration()
        config.api_key = {"authorization": self.service_account_token(namespace, name, create=create)}
        config.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(config)

    def service_account_kubeconfig(self, namespace: str, name: str, *, create: bool = True) -> Path:
        """A kubeconfig file for the ServiceAccount (for kopf, kubectl, helm)."""
        token = self.service_account_token(namespace, name, create=create)
        return self._write_kubeconfig(f"sa-{namespace}-{name}", {"token": token})

    def _write_kubeconfig(self, user: str, credentials: dict[str, str]) -> Path:
        path = self.workdir / f"{user}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "edgetune-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki.ca_cert)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": user, "context": {"cluster": "edgetune-test", "user": user}}],
            "current-context": user,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # ------------------------------------------------------------------ CRDs and nodes

    def install_crds(self, paths: Iterable[Path | str], timeout: float = 60.0) -> list[str]:
        """Create (or replace) every CRD in the YAML files; wait until each is Established.

        CRDs installed after start() reach the controller-manager's garbage collector
        only at its next discovery resync (up to 30s later), as in a real cluster.
        """
        names = []
        with self.api_client() as admin:
            ext = kubernetes.client.ApiextensionsV1Api(admin)
            for crd in _load_crds(paths):
                _apply_crd(ext, crd)
                names.append(crd["metadata"]["name"])
            for name in names:
                self.wait_for(f"CRD {name} Established", lambda n=name: _crd_established(ext, n), timeout)
        return names

    def create_nodes(self, nodes: Iterable[dict[str, Any]], timeout: float = 60.0) -> None:
        """Create KWOK-managed nodes; wait until they are Ready (and untainted, with controllers)."""
        with self.api_client() as admin:
            core = kubernetes.client.CoreV1Api(admin)
            names = []
            for node in nodes:
                core.create_node(node)
                names.append(node["metadata"]["name"])
            for name in names:
                self.wait_for(
                    f"node {name} Ready",
                    lambda n=name: _node_ready(core.read_node(n), untainted=self.with_controllers),
                    timeout,
                )


def _load_crds(paths: Iterable[Path | str]) -> Iterator[dict[str, Any]]:
    # libyaml when present: KubeRay's CRDs are 1.4 MB each, slow in pure Python.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in paths:
        with Path(path).open() as stream:
            for doc in yaml.load_all(stream, Loader=loader):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


def _apply_crd(ext: kubernetes.client.ApiextensionsV1Api, crd: dict[str, Any]) -> None:
    # A create rather than client-side apply: KubeRay's CRDs exceed the 256 KiB
    # last-applied annotation. Responses are read raw (no models for megabytes of
    # schema) but read in full: dropping the connection mid-response makes the
    # apiserver log a handler timeout.
    name = crd["metadata"]["name"]
    try:
        _ = ext.create_custom_resource_definition(crd, _preload_content=False).data
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = json.loads(ext.read_custom_resource_definition(name, _preload_content=False).data)
        version = current["metadata"]["resourceVersion"]
        crd = {**crd, "metadata": {**crd["metadata"], "resourceVersion": version}}
        _ = ext.replace_custom_resource_definition(name, crd, _preload_content=False).data


def _crd_established(ext: kubernetes.client.ApiextensionsV1Api, name: str) -> bool:
    raw = ext.read_custom_resource_definition(name, _preload_content=False).data
    conditions = json.loads(raw).get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def unique_name(prefix: str) -> str:
    """A DNS-1123 name unlikely to collide: prefix + 8 hex chars."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ignore_not_found(call: Callable[[], object]) -> None:
    """Run a delete-style call; a 404 means it is already gone."""
    try:
        call()
    except ApiException as exc:
        if exc.status != 404:
            raise
