"""What locks one job's training cluster down, rendered by pure functions (spec in, dict out):

- a Ray authentication token per attempt, in a Secret the RayJob's `authOptions` names (KubeRay puts it in
  the env of the head, the workers and the submitter, and its own dashboard client reads it from there);
- NetworkPolicies: the Ray pods (head, workers, submitter) accept connections only from each other, from
  KubeRay's operator on the dashboard port and from metrics scrapers on the metrics ports; export pods
  accept none; egress is open only to the job's own Ray pods, DNS, the Kubernetes API and object storage;
- a PodDisruptionBudget: a drain may take at most one of a running job's Ray pods at a time;
- the Pod Security `restricted` contexts every rendered pod carries.

Who may reach what, and why, is in docs/security.md; its commands prove each claim on a cluster.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from edgetune_operator.identity import LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB, JobRef, bounded_name, labels, metadata

# Pod Security Standards, `restricted` profile: non-root, the runtime's seccomp profile, no privilege
# escalation, every capability dropped. (The images already run as non-root users: 1000 and 65532.)
RESTRICTED_POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

RAY_AUTH_TOKEN_KEY = "auth_token"  # the key KubeRay reads from authOptions.secretName
RAY_DASHBOARD_PORT = 8265
RAY_METRICS_PORT = 8080  # KubeRay's --metrics-export-port on every Ray node
COMPONENT_TRAINER = "trainer"  # Ray head and workers
COMPONENT_SUBMITTER = "submitter"  # KubeRay's `ray job submit` pod
COMPONENT_EXPORT = "export"
RAY_COMPONENTS = (COMPONENT_TRAINER, COMPONENT_SUBMITTER)
MAX_NAME = 63


def pod_security() -> dict[str, Any]:
    return copy.deepcopy(RESTRICTED_POD_SECURITY)


def container_security() -> dict[str, Any]:
    return copy.deepcopy(RESTRICTED_CONTAINER_SECURITY)


class NetworkPolicySettings(BaseModel):
    """The install's NetworkPolicy choices (Helm value `networkPolicy`, operator flag --network-policy).

    Peers and rules are Kubernetes NetworkPolicy fragments (`NetworkPolicyPeer`, `NetworkPolicyEgressRule`),
    passed through as written: the cluster's own schema checks them when the first job's policy is created.
    """

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    enabled: bool = Field(True, description="Render the per-job NetworkPolicies (needs a policy-enforcing CNI).")
    kuberay_operator: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}
        ],
        description="Peers allowed to the head's dashboard port: KubeRay's operator polls job status there.",
    )
    metrics_from: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"namespaceSelector": {}}],
        description="Peers allowed to the Ray pods' metrics ports only (Prometheus). [] keeps every scraper out.",
    )
    api_server_ports: list[int] = Field(
        default_factory=lambda: [443, 6443],
        description="The Kubernetes API's ports (Service port and, after the Service's translation, the "
        "server's own): the Ray head's driver reports progress there.",
    )
    api_server_cidrs: list[str] = Field(
        default_factory=list,
        alias="apiServerCIDRs",
        description="Where the API server is; [] allows its ports to any address.",
    )
    storage_egress: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"ports": [{"protocol": "TCP", "port": 443}]}],
        description="Egress rules to object storage (and model hubs). The default allows HTTPS to any address.",
    )


def ray_auth_secret_name(rayjob: str) -> str:
    return f"{rayjob}-ray-auth"


def render_ray_auth_secret(job: JobRef, rayjob: str, attempt: int, token: str) -> dict[str, Any]:
    """The attempt's Ray token. The token is the caller's (random per attempt), so this stays pure."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(
            ray_auth_secret_name(rayjob), job, labels(job, COMPONENT_TRAINER, **{LABEL_ATTEMPT: str(attempt)})
        ),
        "stringData": {RAY_AUTH_TOKEN_KEY: token},
    }


def ray_auth_options(rayjob: str) -> dict[str, Any]:
    return {"mode": "token", "secretName": ray_auth_secret_name(rayjob)}


def ray_pods_selector(job: JobRef) -> dict[str, Any]:
    """The job's Ray pods of every attempt (one attempt runs at a time): head, workers and submitter."""
    return {
        "matchLabels": {LABEL_JOB: job.name},
        "matchExpressions": [{"key": LABEL_COMPONENT, "operator": "In", "values": list(RAY_COMPONENTS)}],
    }


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


DNS_EGRESS: dict[str, Any] = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def network_policy_names(job: JobRef) -> tuple[str, str]:
    return bounded_name(job.name, "-ray", MAX_NAME), bounded_name(job.name, "-export", MAX_NAME)


def render_network_policies(
    job: JobRef, settings: NetworkPolicySettings, metrics_ports: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Two policies per job: its Ray pods, and its export pods. Empty when the install turned them off."""
    if not settings.enabled:
        return []
    ray_name, export_name = network_policy_names(job)
    own_ray_pods = {"podSelector": ray_pods_selector(job)}
    storage = copy.deepcopy(settings.storage_egress)
    api_server: dict[str, Any] = {"ports": _tcp(*settings.api_server_ports)}
    if settings.api_server_cidrs:
        api_server["to"] = [{"ipBlock": {"cidr": cidr}} for cidr in settings.api_server_cidrs]
    ingress: list[dict[str, Any]] = [{"from": [own_ray_pods]}]
    if settings.kuberay_operator:
        ingress.append({"from": copy.deepcopy(settings.kuberay_operator), "ports": _tcp(RAY_DASHBOARD_PORT)})
    if settings.metrics_from:
        ingress.append({"from": copy.deepcopy(settings.metrics_from), "ports": _tcp(*metrics_ports)})
    ray_policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ray_name, job, labels(job, COMPONENT_TRAINER)),
        "spec": {
            "podSelector": ray_pods_selector(job),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [{"to": [copy.deepcopy(own_ray_pods)]}, copy.deepcopy(DNS_EGRESS), api_server, *storage],
        },
    }
    export_policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(export_name, job, labels(job, COMPONENT_EXPORT)),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_JOB: job.name, LABEL_COMPONENT: COMPONENT_EXPORT}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],  # an export serves nothing: its figures leave through its termination message
            "egress": [copy.deepcopy(DNS_EGRESS), *copy.deepcopy(settings.storage_egress)],
        },
    }
    return [ray_policy, export_policy]


def disruption_budget_name(job: JobRef) -> str:
    return bounded_name(job.name, "-ray", MAX_NAME)


def render_disruption_budget(job: JobRef, workers: int) -> dict[str, Any]:
    """At most one of the head and `workers` workers evicted at a time. An integer minAvailable, because
    KubeRay's RayCluster has no scale subresource, without which the disruption controller cannot count a
    percentage or a maxUnavailable and would allow no eviction at all. Pods that are not ready may always
    go: a budget must not keep a broken pod on a node being drained."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(disruption_budget_name(job), job, labels(job, COMPONENT_TRAINER)),
        "spec": {
            "minAvailable": workers,  # of workers + 1 pods
            "selector": {"matchLabels": {LABEL_JOB: job.name, LABEL_COMPONENT: COMPONENT_TRAINER}},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
