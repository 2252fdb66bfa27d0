"""Prometheus and promtool for the observability tests: built once by hack/build-prometheus.sh (make test does).

A run without them fails with the command to run, never skips. `PrometheusServer` runs a real Prometheus on
a scrape config the test writes, and answers PromQL through the HTTP API as Grafana would ask it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmtool import REPO_ROOT, kinds, template
from kubeenv import edgetune_cache
from s3server import free_port

MODULE_FILE = REPO_ROOT / "hack" / "images" / "prometheus" / "go.mod"
PROMETHEUS_API = ("monitoring.coreos.com/v1/PrometheusRule",)


def module_version() -> str:
    for line in MODULE_FILE.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "github.com/prometheus/prometheus":
            return words[1]
    raise AssertionError(f"{MODULE_FILE} requires no github.com/prometheus/prometheus")


def binary(name: str) -> str:
    path = edgetune_cache("EDGETUNE_PROMETHEUS_CACHE", "prometheus", module_version()) / "bin" / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found at {path}: run hack/build-prometheus.sh (make test does)", pytrace=False)
    return str(path)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def chart_rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's PrometheusRule `spec.groups`, as `helm template` renders them with `values`."""
    (rule,) = kinds(
        template(values, api_versions=PROMETHEUS_API, show_only=("templates/prometheusrule.yaml",)), "PrometheusRule"
    )
    return rule["spec"]["groups"]


def write_rule_file(folder: Path, values: dict[str, Any] | None = None) -> Path:
    path = folder / "edgetune-alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": chart_rule_groups(values)}, sort_keys=False))
    return path


class PrometheusServer:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        return self.get("/api/v1/query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        return self.get(f"/api/v1/label/{label}/values", **{"match[]": match})

    def wait_for(self, what: str, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := self.query(expr):
                return result
            time.sleep(0.5)
        raise AssertionError(f"Prometheus: no result for {what} ({expr}) after {timeout:.0f} s")


@contextmanager
def running_prometheus(
    folder: Path, scrape_configs: list[dict[str, Any]], rule_files: list[Path]
) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping every second (and evaluating `rule_files` as often), its data in `folder`."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": scrape_configs,
    }
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    check = promtool("check", "config", str(config_file), cwd=folder)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = folder / "prometheus.log"
    process = subprocess.Popen(
        [binary("prometheus"), f"--config.file={config_file}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = PrometheusServer(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"Prometheus exited {process.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"Prometheus not ready after 60 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
