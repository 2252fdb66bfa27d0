#!/usr/bin/env python3
"""The kind e2e's Prometheus: scrape what the chart's monitors select, then ask it for the job's series.

    helm template ... --show-only templates/servicemonitor.yaml ... | e2e-prometheus.py config NAMESPACE > cm.yaml
    e2e-prometheus.py check NAMESPACE JOB_NAMESPACE JOB

`config` turns the chart's ServiceMonitor, PodMonitor and PrometheusRule (as `helm template` renders them)
into the ConfigMap of a plain Prometheus: one scrape job per monitor, with the relabelling the Prometheus
Operator generates for the fields these monitors use (selector.matchLabels, namespaceSelector, the port by
name, path, interval, honorLabels, ServiceMonitor jobLabel, PodMonitor's "<namespace>/<name>" job), and the
rule groups as a rule file. So the e2e checks that the monitors select the pods and the Service that really
run, on their real ports, through the jobs' NetworkPolicies, without running the Prometheus Operator itself.

`check` asks that Prometheus, through the API server's service proxy (kubectl get --raw), for the operator's
and the training run's series, and for the loaded alert rules; it exits non-zero naming what is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
from typing import Any

import yaml

OPERATOR_SCRAPE_JOB = "edgetune-operator"  # edgetune_trainer.metric_catalog.OPERATOR_SCRAPE_JOB
SERVICE = "prometheus"
PORT = 9090


def sanitize(label: str) -> str:
    """Kubernetes label name -> the suffix of its __meta_kubernetes_* label, as Prometheus writes it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def namespaces(selector: dict[str, Any], own: str) -> dict[str, Any]:
    if selector.get("any"):
        return {}
    return {"namespaces": {"names": selector.get("matchNames") or [own]}}


def keep_labels(kind: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"action": "keep", "source_labels": [f"__meta_kubernetes_{kind}_label_{sanitize(k)}"], "regex": re.escape(v)}
        for k, v in sorted(match_labels.items())
    ]


def service_monitor_jobs(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    meta, spec = monitor["metadata"], monitor["spec"]
    jobs = []
    for index, endpoint in enumerate(spec["endpoints"]):
        relabel = [
            *keep_labels("service", spec["selector"].get("matchLabels", {})),
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": endpoint["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"target_label": "endpoint", "replacement": endpoint["port"]},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        ]
        if job_label := spec.get("jobLabel"):
            relabel.append(
                {
                    "source_labels": [f"__meta_kubernetes_service_label_{sanitize(job_label)}"],
                    "target_label": "job",
                    "regex": "(.+)",
                }
            )
        jobs.append(
            {
                "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}",
                "honor_labels": bool(endpoint.get("honorLabels")),
                "metrics_path": endpoint.get("path", "/metrics"),
                "scrape_interval": endpoint.get("interval", "30s"),
                "kubernetes_sd_configs": [
                    {"role": "endpoints", **namespaces(spec.get("namespaceSelector", {}), meta["namespace"])}
                ],
                "relabel_configs": relabel,
            }
        )
    return jobs


def pod_monitor_jobs(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    meta, spec = monitor["metadata"], monitor["spec"]
    jobs = []
    for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
        relabel = [
            *keep_labels("pod", spec["selector"].get("matchLabels", {})),
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": endpoint["port"],
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"target_label": "endpoint", "replacement": endpoint["port"]},
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
        ]
        jobs.append(
            {
                "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{index}",
                "honor_labels": bool(endpoint.get("honorLabels")),
                "metrics_path": endpoint.get("path", "/metrics"),
                "scrape_interval": endpoint.get("interval", "30s"),
                "kubernetes_sd_configs": [
                    {"role": "pod", **namespaces(spec.get("namespaceSelector", {}), meta["namespace"])}
                ],
                "relabel_configs": relabel,
            }
        )
    return jobs


def prometheus_config(documents: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prometheus.yml, the rule file) from the chart's rendered monitors and PrometheusRule."""
    scrape: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    for document in documents:
        kind = document.get("kind")
        if kind == "ServiceMonitor":
            scrape += service_monitor_jobs(document)
        elif kind == "PodMonitor":
            scrape += pod_monitor_jobs(document)
        elif kind == "PrometheusRule":
            groups += document["spec"]["groups"]
    kinds = {d.get("kind") for d in documents}
    missing = {"ServiceMonitor", "PodMonitor", "PrometheusRule"} - kinds
    if missing:
        raise SystemExit(f"e2e-prometheus: the rendered chart has no {', '.join(sorted(missing))}")
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": ["/etc/prometheus/edgetune-alerts.yaml"],
        "scrape_configs": scrape,
    }
    return config, {"groups": groups}


def config_map(namespace: str, documents: list[dict[str, Any]]) -> dict[str, Any]:
    config, rules = prometheus_config(documents)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prometheus-config", "namespace": namespace},
        "data": {
            "prometheus.yml": yaml.safe_dump(config, sort_keys=False),
            "edgetune-alerts.yaml": yaml.safe_dump(rules, sort_keys=False),
        },
    }


def query(namespace: str, path: str, **params: str) -> Any:
    raw = f"/api/v1/namespaces/{namespace}/services/http:{SERVICE}:{PORT}/proxy{path}"
    if params:
        raw += "?" + urllib.parse.urlencode(params)
    out = subprocess.run(["kubectl", "get", "--raw", raw], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl get --raw {raw}: {out.stderr.strip()}")
    body = json.loads(out.stdout)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def rule_count(namespace: str) -> int:
    """How many alert rules the ConfigMap gave this Prometheus (the chart's PrometheusRule)."""
    out = subprocess.run(
        ["kubectl", "-n", namespace, "get", "configmap", "prometheus-config", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rules = yaml.safe_load(json.loads(out.stdout)["data"]["edgetune-alerts.yaml"])
    return sum(len(group["rules"]) for group in rules["groups"])


def values(namespace: str, expr: str) -> list[tuple[dict[str, str], float]]:
    return [(r["metric"], float(r["value"][1])) for r in query(namespace, "/api/v1/query", query=expr)["result"]]


def check(namespace: str, job_namespace: str, job: str, timeout: float = 120) -> list[str]:
    """What is missing (empty: all there). Retried until `timeout`: the last scrape may still be due."""
    selector = f'namespace="{job_namespace}", job="{job}"'
    phase = "edgetune_job_phase{" + selector + ', phase="%s"}'
    wanted = {
        "the operator's scrape job is up": f'up{{job="{OPERATOR_SCRAPE_JOB}"}} == 1',
        "the operator's series of the job (it was Running)": f"max_over_time({phase % 'Running'}[1h]) == 1",
        "the job Succeeded, as the operator reports it": f"{phase % 'Succeeded'} == 1",
        "rank 0's steps (through the PodMonitor)": f"max_over_time(edgetune_train_step{{{selector}}}[1h]) > 0",
        "rank 0's loss": f"max_over_time(edgetune_train_loss{{{selector}}}[1h]) > 0",
        "the export's budget series": f"edgetune_export_budgets_missed{{{selector}}} == 0",
        "one leading operator replica": "sum(edgetune_leader) == 1",
    }
    expected_rules = rule_count(namespace)
    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for what, expr in wanted.items():
            try:
                found = values(namespace, expr)
            except RuntimeError as err:
                missing.append(f"{what}: {err}")
                continue
            if not found:
                missing.append(f"{what}: no result for {expr}")
            else:
                print(f"  {what}: {expr} -> {[round(v, 4) for _, v in found]}")
        rules = [r for g in query(namespace, "/api/v1/rules")["groups"] for r in g["rules"]]
        unhealthy = [f"{r['name']}: {r.get('lastError') or r['health']}" for r in rules if r["health"] != "ok"]
        if len(rules) != expected_rules or unhealthy:
            missing.append(f"alert rules: {len(rules)} loaded (want {expected_rules}), unhealthy: {unhealthy}")
        firing = [a["labels"] for a in query(namespace, "/api/v1/alerts")["alerts"] if a["state"] == "firing"]
        if firing:
            missing.append(f"alerts firing on a healthy run: {firing}")
        if not missing:
            print(f"  alert rules: {len(rules)} loaded, all evaluated ok; none firing")
            return missing
        if time.monotonic() > deadline:
            return missing
        print(f"  waiting for: {'; '.join(missing)}")
        time.sleep(10)


def main(argv: list[str]) -> int:
    if argv[:1] == ["config"] and len(argv) == 2:
        documents = [d for d in yaml.safe_load_all(sys.stdin) if d]
        print(yaml.safe_dump(config_map(argv[1], documents), sort_keys=False))
        return 0
    if argv[:1] == ["check"] and len(argv) == 4:
        missing = check(*argv[1:])
        for line in missing:
            print(f"  MISSING {line}", file=sys.stderr)
        return 1 if missing else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
