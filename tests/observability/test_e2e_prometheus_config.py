"""hack/e2e-prometheus.py: the kind e2e's Prometheus config, made from the chart's monitors as `helm template`
renders them, is what the monitors say (selectors, ports, namespaces, job labels), and promtool accepts it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from helmtool import REPO_ROOT, template
from promtool import promtool

from edgetune_operator.alerts import AlertSettings, alert_groups
from edgetune_trainer.metric_catalog import OPERATOR_SCRAPE_JOB

MONITORING = tuple(f"monitoring.coreos.com/v1/{kind}" for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"))


def translator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("e2e_prometheus", REPO_ROOT / "hack" / "e2e-prometheus.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered() -> list[dict[str, Any]]:
    values = {
        "minio": {"enabled": True},
        "watch": {"namespaces": ["ml"]},
        "metrics": {"podMonitor": {"interval": "5s"}},
    }
    return template(values, namespace="edgetune-system", api_versions=MONITORING)


def relabel(job: dict[str, Any], action: str = "keep") -> dict[str, str]:
    return {
        rule["source_labels"][0]: rule["regex"]
        for rule in job["relabel_configs"]
        if rule.get("action", "replace") == action and rule.get("source_labels")
    }


def test_the_config_scrapes_what_the_monitors_select() -> None:
    module = translator()
    assert module.OPERATOR_SCRAPE_JOB == OPERATOR_SCRAPE_JOB  # the script's copy (it imports no edgetune code)
    config, rules = module.prometheus_config(rendered())
    jobs = {job["job_name"].split("/")[0]: job for job in config["scrape_configs"]}
    assert len(jobs) == len(config["scrape_configs"]) == 2
    operator, training = jobs["serviceMonitor"], jobs["podMonitor"]
    assert operator["honor_labels"] and training["honor_labels"]
    assert relabel(operator) == {
        "__meta_kubernetes_service_label_app_kubernetes_io_name": "edgetune",
        "__meta_kubernetes_service_label_app_kubernetes_io_instance": "edgetune",
        "__meta_kubernetes_service_label_app_kubernetes_io_component": "operator",
        "__meta_kubernetes_endpoint_port_name": "metrics",
    }
    assert operator["kubernetes_sd_configs"] == [{"role": "endpoints", "namespaces": {"names": ["edgetune-system"]}}]
    # The alerts' scrape job: the Service's label, through the monitor's jobLabel.
    (job_label,) = [r for r in operator["relabel_configs"] if r.get("regex") == "(.+)"]
    assert job_label == {
        "source_labels": ["__meta_kubernetes_service_label_edgetune_dev_scrape_job"],
        "target_label": "job",
        "regex": "(.+)",
    }
    assert relabel(training) == {
        "__meta_kubernetes_pod_label_app_kubernetes_io_managed_by": "edgetune",
        "__meta_kubernetes_pod_label_edgetune_dev_component": "trainer",
        "__meta_kubernetes_pod_container_port_name": "train-metrics",
    }
    assert training["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["ml"]}}]
    assert training["scrape_interval"] == "5s"
    # The chart's default values are the code's defaults.
    assert rules == {"groups": alert_groups(AlertSettings())}
    assert f'up{{job="{OPERATOR_SCRAPE_JOB}"}}' in yaml.safe_dump(rules)


def test_promtool_accepts_the_config_and_its_rules(tmp_path: Path) -> None:
    config_map = translator().config_map("e2e-monitoring", rendered())
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    config["rule_files"] = [str(tmp_path / "edgetune-alerts.yaml")]  # where the ConfigMap is mounted in the pod
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", "--lint-fatal", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def test_a_chart_without_its_monitors_is_refused() -> None:
    documents = [d for d in rendered() if d["kind"] != "PodMonitor"]
    try:
        translator().prometheus_config(documents)
    except SystemExit as err:
        assert "PodMonitor" in str(err)
    else:
        raise AssertionError("a rendered chart without its PodMonitor was accepted")
