"""What locks a job's training cluster down, as rendered: Ray token authentication, the restricted pod
contexts, the NetworkPolicies and the PodDisruptionBudget. The API server checks each against its schema
and the restricted profile in tests/controlplane/test_pod_security.py; kind enforces them in the e2e."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgetune_operator.api import parse_job
from edgetune_operator.identity import JobRef
from edgetune_operator.render import (
    OperatorDefaults,
    render_config_map,
    render_export_job,
    render_job_safeguards,
    render_rayjob,
)
from edgetune_operator.security import (
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    NetworkPolicySettings,
    render_ray_auth_secret,
)

ROOT = Path(__file__).resolve().parents[2]
REF = JobRef("bert-imdb", "team-a", "0000-uid")


def spec_of(example: str = "bert-imdb"):
    return parse_job(yaml.safe_load((ROOT / "examples" / f"{example}.yaml").read_text())).spec


def pod_templates(example: str) -> dict[str, dict[str, Any]]:
    """Every pod template edgetune renders for a job, by role."""
    spec = spec_of(example)
    cluster = render_rayjob(REF, spec, 1, OperatorDefaults())["spec"]
    templates = {
        "head": cluster["rayClusterSpec"]["headGroupSpec"]["template"],
        "worker": cluster["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
        "submitter": cluster["submitterPodTemplate"],
    }
    for target in spec.export:
        templates[f"export-{target.name}"] = render_export_job(REF, spec, target, 1, OperatorDefaults())["spec"][
            "template"
        ]
    return templates


@pytest.mark.parametrize("example", ["bert-imdb", "resnet-cifar10", "quickstart-kind", "minilm-sentiment-kind"])
def test_every_rendered_pod_runs_restricted(example: str) -> None:
    for role, template in pod_templates(example).items():
        pod = template["spec"]
        assert pod["securityContext"] == RESTRICTED_POD_SECURITY, role
        for container in pod["containers"]:
            assert container["securityContext"] == RESTRICTED_CONTAINER_SECURITY, role
        assert not any("hostPath" in volume for volume in pod.get("volumes", [])), role
        # Only the head's driver talks to the Kubernetes API (its own job's status).
        assert pod.get("automountServiceAccountToken", True) is (role == "head"), role


def test_ray_authenticates_with_a_per_attempt_token_secret() -> None:
    rayjob = render_rayjob(REF, spec_of(), 3, OperatorDefaults())
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "bert-imdb-a3-ray-auth"}
    secret = render_ray_auth_secret(REF, "bert-imdb-a3", 3, "s3cr3t-token")
    assert secret["metadata"]["name"] == "bert-imdb-a3-ray-auth"
    assert secret["metadata"]["ownerReferences"] == [REF.owner_reference()]
    assert secret["stringData"] == {"auth_token": "s3cr3t-token"}  # the key KubeRay reads
    # The RayJob and the ConfigMap only name the Secret.
    config_map = render_config_map(REF, spec_of(), 3, OperatorDefaults())
    assert "s3cr3t-token" not in json.dumps(rayjob) + json.dumps(config_map)


def test_the_submitter_is_labelled_as_the_jobs_and_placed_on_its_pool() -> None:
    template = render_rayjob(REF, spec_of(), 1, OperatorDefaults())["spec"]["submitterPodTemplate"]
    assert template["metadata"]["labels"]["edgetune.dev/component"] == "submitter"
    assert template["metadata"]["labels"]["edgetune.dev/job"] == "bert-imdb"
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # KubeRay fills in the command of a container named like its own, and only when none is given.
    (container,) = pod["containers"]
    assert container["name"] == "ray-job-submitter" and "command" not in container


def policies(settings: NetworkPolicySettings | None = None) -> dict[str, dict[str, Any]]:
    defaults = OperatorDefaults(network_policy=settings or NetworkPolicySettings())
    rendered = render_job_safeguards(REF, spec_of(), defaults)
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in rendered}


def test_ray_pods_accept_their_own_job_kuberay_on_the_dashboard_and_scrapers_on_metrics_only() -> None:
    ray = policies()["NetworkPolicy/bert-imdb-ray"]["spec"]
    assert ray["podSelector"] == {
        "matchLabels": {"edgetune.dev/job": "bert-imdb"},
        "matchExpressions": [{"key": "edgetune.dev/component", "operator": "In", "values": ["trainer", "submitter"]}],
    }
    own, kuberay, metrics = ray["ingress"]
    assert own == {"from": [{"podSelector": ray["podSelector"]}]} and "ports" not in own
    assert kuberay["from"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}
    assert kuberay["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8090}]
    egress_ports = [sorted(p["port"] for p in rule.get("ports", [])) for rule in ray["egress"]]
    assert egress_ports == [[], [53, 53], [443, 6443], [443]]  # own pods, DNS, API server, HTTPS storage
    assert ray["egress"][0] == {"to": [{"podSelector": ray["podSelector"]}]}


def test_export_pods_accept_nothing_and_reach_only_dns_and_storage() -> None:
    export = policies()["NetworkPolicy/bert-imdb-export"]["spec"]
    assert export["podSelector"]["matchLabels"] == {"edgetune.dev/job": "bert-imdb", "edgetune.dev/component": "export"}
    assert export["policyTypes"] == ["Ingress", "Egress"] and export["ingress"] == []
    assert [sorted(p["port"] for p in rule["ports"]) for rule in export["egress"]] == [[53, 53], [443]]


def test_policy_settings_narrow_or_turn_off() -> None:
    storage = [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 9000}]}]
    settings = NetworkPolicySettings.model_validate(
        {"metricsFrom": [], "kuberayOperator": [], "apiServerCIDRs": ["172.18.0.2/32"], "storageEgress": storage}
    )
    ray = policies(settings)["NetworkPolicy/bert-imdb-ray"]["spec"]
    assert len(ray["ingress"]) == 1  # the job's own pods only
    assert ray["egress"][2]["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    assert ray["egress"][3] == storage[0]
    off = policies(NetworkPolicySettings(enabled=False))
    assert list(off) == ["PodDisruptionBudget/bert-imdb-ray"]


def test_disruption_budget_lets_a_drain_take_one_ray_pod_at_a_time() -> None:
    budget = policies()["PodDisruptionBudget/bert-imdb-ray"]
    spec = budget["spec"]
    workers = spec_of().resources.workers
    assert spec["minAvailable"] == workers  # of workers + 1 (the head)
    assert spec["selector"] == {"matchLabels": {"edgetune.dev/job": "bert-imdb", "edgetune.dev/component": "trainer"}}
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budget["metadata"]["ownerReferences"] == [REF.owner_reference()]
