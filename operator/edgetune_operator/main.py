"""`edgetune-operator`: run the FineTuneJob operator (kopf) in or out of a cluster.

    edgetune-operator --namespace team-a --namespace team-b     watch these namespaces (a Role in each)
    edgetune-operator --all-namespaces                          watch every namespace (a ClusterRole)

Out of a cluster it uses --kubeconfig or $KUBECONFIG; in a pod, its ServiceAccount. With more than one
replica, pass --leader-elect: the replicas elect one leader through a Lease (see leader.py) and the
others wait, answering /healthz, until it goes; a single replica needs no election.
The same handlers run under `kopf run -m edgetune_operator.kopf_entry` (settings from EDGETUNE_* env).
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import kopf
import kubernetes.client
import kubernetes.config
from pydantic import ValidationError

from edgetune_operator.handlers import register
from edgetune_operator.kubeapi import Kube
from edgetune_operator.leader import LeaseElector, LeaseForbiddenError
from edgetune_operator.memory import limit_arenas
from edgetune_operator.metrics import OperatorMetrics
from edgetune_operator.reconciler import Reconciler
from edgetune_operator.render import OperatorDefaults
from edgetune_operator.security import NetworkPolicySettings
from edgetune_trainer.config import StorageSpec


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="edgetune-operator", description="The edgetune FineTuneJob operator.")
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("-n", "--namespace", action="append", dest="namespaces", help="watch this namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    parser.add_argument("--trainer-image", default=env("EDGETUNE_TRAINER_IMAGE", OperatorDefaults.trainer_image))
    parser.add_argument("--ray-version", default=env("EDGETUNE_RAY_VERSION", OperatorDefaults.ray_version))
    parser.add_argument("--storage-uri", default=env("EDGETUNE_STORAGE_URI"), help="default spec.storage.uri")
    parser.add_argument("--storage-endpoint", default=env("EDGETUNE_STORAGE_ENDPOINT"), help="default endpoint")
    parser.add_argument(
        "--storage-secret", default=env("EDGETUNE_STORAGE_SECRET"), help="default spec.storage.credentialsSecret"
    )
    parser.add_argument(
        "--network-policy",
        type=network_policy_settings,
        default=network_policy_settings(env("EDGETUNE_NETWORK_POLICY", "{}")),
        help="per-job NetworkPolicy settings as JSON (the Helm value networkPolicy); '{\"enabled\": false}': none",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="/metrics port (0: off)")
    parser.add_argument("--health-port", type=int, default=8081, help="/healthz port (0: off)")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="re-check unfinished jobs this often")
    parser.add_argument("--leader-elect", action="store_true", help="elect one active replica through a Lease")
    parser.add_argument(
        "--leader-election-namespace", default=env("POD_NAMESPACE"), help="the Lease's namespace ($POD_NAMESPACE)"
    )
    parser.add_argument("--leader-election-name", default="edgetune-leader", help="the Lease's name")
    parser.add_argument("--verbose", action="store_true")
    return parser


def network_policy_settings(text: str) -> NetworkPolicySettings:
    """--network-policy's JSON; a mistake is a usage error naming the field, at start, not at the first job."""
    try:
        return NetworkPolicySettings.model_validate_json(text)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors())
        raise argparse.ArgumentTypeError(f"invalid NetworkPolicy settings: {problems}") from None


# Connections kept open to the API server: the 16 reconcile workers, the event poster, the resync and the
# leader election. With the client's default (5 per core: 10 here), a burst of reconciles kept opening and
# discarding connections, each a new TLS handshake on both sides.
CONNECTION_POOL_SIZE = 80


def api_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    config = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=config)
    config.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return kubernetes.client.ApiClient(config)


def defaults_from(args: argparse.Namespace) -> OperatorDefaults:
    storage = StorageSpec.model_validate(
        {
            k: v
            for k, v in {
                "uri": args.storage_uri,
                "endpoint": args.storage_endpoint,
                "credentialsSecret": args.storage_secret,
            }.items()
            if v
        }
    )
    return OperatorDefaults(
        trainer_image=args.trainer_image,
        ray_version=args.ray_version,
        storage=storage,
        network_policy=args.network_policy,
    )


def process_identity() -> str:
    """Who this process is, for the Lease and for kopf: the pod name (or host name), and a suffix that keeps
    two processes of one pod (a restart) apart. Given to kopf explicitly, because kopf's own guess asks the
    passwd database for the user name, and the image's uid 65532 has no entry there (a KeyError at start)."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def leader_elector(args: argparse.Namespace, api: kubernetes.client.ApiClient, identity: str) -> LeaseElector:
    if not args.leader_election_namespace:
        raise SystemExit("edgetune-operator: --leader-elect needs --leader-election-namespace or $POD_NAMESPACE")
    return LeaseElector(api, args.leader_election_namespace, args.leader_election_name, identity)


class _StandbyHealth(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"standby: waiting for the leader's Lease\n")

    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not worth a line
        pass


@contextmanager
def standby_health(port: int) -> Iterator[None]:
    """Answer /healthz while waiting for leadership, so that the kubelet does not restart a healthy follower."""
    if not port:
        yield
        return
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _StandbyHealth)
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()  # kopf's liveness endpoint binds the same port next


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limit_arenas()  # before any thread: see memory.py
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf logs in through the same file
    api = api_client(args.kubeconfig)
    stop_leading = threading.Event()
    identity = process_identity()
    elector = leader_elector(args, api, identity) if args.leader_elect else None
    renewer: threading.Thread | None = None
    metrics = OperatorMetrics()
    # Served before the election, so a standby replica is scraped too (edgetune_leader 0): "up but not
    # leading" and "down" are different pages.
    if args.metrics_port:
        port = metrics.serve(args.metrics_port)
        logging.getLogger("edgetune.operator").info("metrics on :%d/metrics", port)
    if elector is not None:
        try:
            with standby_health(args.health_port):
                elector.wait_for_leadership(stop_leading)
        except KeyboardInterrupt:
            return 0
        except LeaseForbiddenError as err:
            logging.getLogger("edgetune.leader").error("%s", err)
            return 1
        # A leader that cannot renew must stop at once: another replica takes over after the Lease expires.
        renewer = elector.keep_renewing(stop_leading, on_lost=lambda: os._exit(1))
    metrics.leader.set(1)
    namespaces = [] if args.all_namespaces else list(args.namespaces)
    reconciler = Reconciler(Kube(api), defaults_from(args), metrics, namespaces)
    registry = kopf.OperatorRegistry()
    stop_resync = register(registry, reconciler, args.resync_seconds)
    try:
        asyncio.run(
            kopf.operator(
                registry=registry,
                clusterwide=args.all_namespaces,
                namespaces=namespaces,
                standalone=True,  # one active replica is the Lease's job, not kopf peering's
                identity=identity,  # type: ignore[arg-type]  # kopf.Identity is a NewType of str
                liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
            )
        )
    except KeyboardInterrupt:
        pass
    finally:
        stop_resync.set()
        stop_leading.set()
        if elector is not None:
            if renewer is not None:
                renewer.join(timeout=10)  # a renewal still in flight would otherwise re-take the released Lease
            elector.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
