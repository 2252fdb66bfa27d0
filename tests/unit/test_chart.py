"""The Helm chart, rendered by the real helm binary: lint, values schema, generated files, RBAC, security.

Server-side validation of these renders and an install into the real control plane are in
tests/controlplane/test_chart_install.py.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmtool import CHART, REPO_ROOT, kinds, run, set_args, template, tool

from edgetune_operator.alerts import AlertSettings, alert_groups
from edgetune_operator.api import parse_job
from edgetune_operator.chartfiles import chart_files
from edgetune_operator.main import build_parser
from edgetune_operator.rbac import leader_election_rules, operator_rules
from edgetune_operator.render import JobRef, OperatorDefaults, render_rayjob
from edgetune_trainer.metric_catalog import OPERATOR_SCRAPE_JOB

MONITORING = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)


def operator_deployment(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in kinds(documents, "Deployment") if d["metadata"]["name"].endswith("-operator")]
    return deployment


def operator_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = operator_deployment(documents)["spec"]["template"]["spec"]["containers"]
    return container


def test_helm_lint_passes_with_default_and_non_default_values() -> None:
    run([tool("helm"), "lint", "--strict", str(CHART)])
    values = {"replicaCount": 2, "minio": {"enabled": True}, "watch": {"namespaces": ["a", "b"]}}
    run([tool("helm"), "lint", "--strict", str(CHART), *set_args(values)])
    run([tool("helm"), "lint", "--strict", str(CHART), *set_args({"watch": {"allNamespaces": True}})])


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = version("edgetune")  # from pyproject.toml, through the editable install
    assert chart["appVersion"] == package
    container = operator_container(template())
    assert container["image"] == f"ghcr.io/edgetune/operator:{package}"
    assert f"--trainer-image=ghcr.io/edgetune/trainer:{package}" in container["args"]


def test_generated_chart_files_have_not_drifted() -> None:
    for relative, text in chart_files().items():
        assert (CHART / relative).read_text() == text, f"{relative} is stale: run `make chart`"
    top_level = REPO_ROOT / "crds" / "finetunejobs.edgetune.dev.yaml"
    assert (CHART / "crds" / top_level.name).read_bytes() == top_level.read_bytes()
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [top_level.name]


def test_namespaced_install_grants_exactly_the_operator_rules_and_nothing_cluster_wide() -> None:
    documents = template({"watch": {"namespaces": ["team-a", "team-b"]}})
    assert not kinds(documents, "ClusterRole") and not kinds(documents, "ClusterRoleBinding")
    roles = kinds(documents, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert role["rules"] == operator_rules()
    for binding in kinds(documents, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "edgetune-operator", "namespace": "edgetune-system"}
        ]
    args = operator_container(documents)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_without_watched_namespaces_the_release_namespace_is_watched() -> None:
    documents = template(namespace="ml")
    assert [r["metadata"]["namespace"] for r in kinds(documents, "Role")] == ["ml"]
    assert "--namespace=ml" in operator_container(documents)["args"]


def test_all_namespaces_uses_one_cluster_role_with_the_same_rules() -> None:
    documents = template({"watch": {"allNamespaces": True}})
    (cluster_role,) = kinds(documents, "ClusterRole")
    assert cluster_role["rules"] == operator_rules()
    assert not kinds(documents, "Role")
    assert "--all-namespaces" in operator_container(documents)["args"]


def test_deployment_args_parse_with_the_operator_command_line() -> None:
    values = {"replicaCount": 2, "minio": {"enabled": True}, "verbose": True, "resyncSeconds": 12}
    args = build_parser().parse_args(operator_container(template(values))["args"])
    assert args.namespaces == ["edgetune-system"]
    assert args.storage_uri == "s3://edgetune/jobs"
    assert args.storage_endpoint == "http://edgetune-minio.edgetune-system.svc:9000"
    assert args.storage_secret == "edgetune-minio"
    assert args.leader_elect and args.leader_election_name == "edgetune-leader"
    assert args.verbose and args.resync_seconds == 12
    assert build_parser().parse_args(operator_container(template())["args"]).leader_elect is False


def test_network_policy_values_reach_the_operator_with_the_dev_minio_added() -> None:
    documents = template({"minio": {"enabled": True}})
    policy = build_parser().parse_args(operator_container(documents)["args"]).network_policy
    assert policy.enabled and policy.api_server_ports == [443, 6443]
    https, minio = policy.storage_egress
    assert https == {"ports": [{"port": 443, "protocol": "TCP"}]}
    assert minio["ports"] == [{"port": 9000, "protocol": "TCP"}]
    (peer,) = minio["to"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "edgetune-system"}}
    minio_pods = next(
        d for d in kinds(template({"minio": {"enabled": True}}), "Deployment") if "minio" in d["metadata"]["name"]
    )
    assert peer["podSelector"]["matchLabels"] == minio_pods["spec"]["template"]["metadata"]["labels"]
    values = {"networkPolicy": {"enabled": False, "apiServerCIDRs": ["172.18.0.2/32"]}}
    args = build_parser().parse_args(operator_container(template(values))["args"])
    assert not args.network_policy.enabled and args.network_policy.api_server_cidrs == ["172.18.0.2/32"]


def test_operator_pod_is_locked_down_and_probed_on_its_health_port() -> None:
    documents = template()
    pod = operator_deployment(documents)["spec"]["template"]["spec"]
    container = operator_container(documents)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    health = build_parser().parse_args(container["args"]).health_port
    assert ports["health"] == health
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator_deployment(documents)["spec"]["strategy"]["type"] == "Recreate"


def test_replicas_elect_a_leader_with_a_lease_role_in_the_release_namespace_only() -> None:
    documents = template({"replicaCount": 3})
    (lease_role,) = [r for r in kinds(documents, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert lease_role["metadata"]["namespace"] == "edgetune-system"
    assert lease_role["rules"] == leader_election_rules("edgetune-leader")
    assert "--leader-elect" in operator_container(documents)["args"]


def test_monitors_render_only_when_the_prometheus_operator_crds_exist() -> None:
    documents = template()
    assert not kinds(documents, "ServiceMonitor") and not kinds(documents, "PodMonitor")
    assert not kinds(documents, "PrometheusRule")
    documents = template({"watch": {"namespaces": ["a", "b"]}}, api_versions=MONITORING)
    (service_monitor,) = kinds(documents, "ServiceMonitor")
    (service,) = kinds(documents, "Service")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True
    # The alerts name the operator's scrape job; the monitor takes it from the Service's label.
    assert service["metadata"]["labels"][service_monitor["spec"]["jobLabel"]] == OPERATOR_SCRAPE_JOB
    (pod_monitor,) = kinds(documents, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "train-metrics" and endpoint["honorLabels"] is True
    off = {"metrics": {"serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": False}}}
    assert not kinds(template(off, api_versions=MONITORING), "ServiceMonitor")
    assert not kinds(template({"alerts": {"enabled": False}}, api_versions=MONITORING), "PrometheusRule")


def test_prometheus_rule_fills_in_its_values_and_keeps_the_alert_templates() -> None:
    values = {"alerts": {"stalledMinutes": 7, "runbookBaseUrl": "https://wiki.example/edgetune", "labels": {"a": "b"}}}
    (rule,) = kinds(template(values, api_versions=MONITORING), "PrometheusRule")
    assert rule["metadata"]["labels"]["a"] == "b"
    expected = alert_groups(AlertSettings(stalled_minutes="7", runbook_base_url="https://wiki.example/edgetune"))
    assert rule["spec"]["groups"] == expected
    text = yaml.safe_dump(rule)
    assert "__EDGETUNE_" not in text and "{{ $labels.job }}" in text


def test_pod_monitor_selects_the_training_pods_the_operator_renders() -> None:
    (pod_monitor,) = kinds(template(api_versions=MONITORING), "PodMonitor")
    spec = parse_job(yaml.safe_load((REPO_ROOT / "examples" / "bert-imdb.yaml").read_text())).spec
    rayjob = render_rayjob(JobRef("bert", "ml", "uid-1"), spec, 1, OperatorDefaults())
    (workers,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    labels = workers["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = [p["name"] for c in workers["template"]["spec"]["containers"] for p in c.get("ports", [])]
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports


def test_dashboard_config_map_carries_the_dashboard_for_grafanas_sidecar() -> None:
    (config_map,) = kinds(template(), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "edgetune.json").read_text())
    assert json.loads(config_map["data"]["edgetune.json"]) == shipped
    assert not kinds(template({"dashboard": {"enabled": False}}), "ConfigMap")


def test_dev_minio_shares_one_generated_password_across_its_secret_copies() -> None:
    documents = template({"minio": {"enabled": True}, "watch": {"namespaces": ["a", "b"]}})
    secrets = kinds(documents, "Secret")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["a", "b", "edgetune-system"]
    assert len({s["data"]["AWS_SECRET_ACCESS_KEY"] for s in secrets}) == 1
    assert {s["metadata"]["name"] for s in secrets} == {"edgetune-minio"}
    assert {d["kind"] for d in documents} >= {"PersistentVolumeClaim", "Job", "Service", "Deployment"}
    (bucket_job,) = kinds(documents, "Job")
    assert bucket_job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert not kinds(template(), "Secret")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"watch": {"namespace": ["a"]}}, "additional properties 'namespace' not allowed"),
        ({"watch": {"namespaces": ["Team_A"]}}, "/watch/namespaces/0"),
        ({"storage": {"uri": "http://bucket"}}, "/storage/uri"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"minio": {"rootPassword": "short"}}, "/minio/rootPassword"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"networkPolicy": {"apiServerCIDRs": ["kubernetes"]}}, "/networkPolicy/apiServerCIDRs/0"),
        ({"healthPort": 8080}, "healthPort and metrics.port must differ"),
    ],
)
def test_a_bad_value_fails_the_install_naming_the_key(values: dict[str, Any], message: str) -> None:
    result = run([tool("helm"), "install", "--dry-run=client", "edgetune", str(CHART), *set_args(values)], check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_values_yaml_documents_every_top_level_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]) - {"global"}
    text = (CHART / "values.yaml").read_text()
    for key in values:  # a comment right above (or on the line before a blank) each key
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert lines[index - 1].startswith("#") or lines[index - 2].startswith("#"), f"{key} has no comment"


def test_notes_tell_the_next_commands_and_warn_when_kuberay_is_missing() -> None:
    result = run([tool("helm"), "install", "--dry-run=client", "edgetune", str(CHART)])
    assert "KubeRayMissing" in result.stdout and "helm install kuberay-operator" in result.stdout
    assert "kubectl get finetunejobs" in result.stdout
    # With KubeRay installed the warning is gone: tests/controlplane/test_chart_install.py.


def test_the_chart_folder_holds_no_stray_files() -> None:
    allowed = {
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        ".helmignore",
        "templates",
        "crds",
        "files",
        "dashboards",
    }
    assert {p.name for p in CHART.iterdir()} <= allowed
    assert Path(CHART / "files" / "operator-rules.yaml").exists()
