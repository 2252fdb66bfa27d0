"""The shipped Grafana dashboard and alerts query only metrics the code really exports, and cover all of them;
the registries export exactly the metric catalog. (tests/observability/ evaluates the queries on a real
Prometheus; test_chart.py checks that the committed dashboard and alerts are what the code generates.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edgetune_operator.alerts import AlertSettings, alert_rules
from edgetune_operator.metrics import JobSnapshot, OperatorMetrics
from edgetune_trainer.metric_catalog import CATALOG
from edgetune_trainer.training.metrics import TrainMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "edgetune" / "dashboards" / "edgetune.json"
METRIC = re.compile(r"\bedgetune_[a-zA-Z0-9_]+")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets' `expr` and query variables' `query` (string or {query: ...})."""
    found = [
        target["expr"]
        for panel in walk_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if query:
            found.append(query)
    return found


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def registries() -> list[CollectorRegistry]:
    """The operator's and trainer's registries, every metric touched so each has samples."""
    operator = OperatorMetrics()
    operator.jobs.set("ns", "j", JobSnapshot("Running", step=3, running_since=1.0e9, attempt=1, backoff_limit=2))
    operator.jobs.set("ns", "k", JobSnapshot("Succeeded", budgets_missed=(("edge", 1),)))
    operator.leader.set(1)
    operator.reconcile_errors.inc()
    operator.reconcile_seconds.observe(0.1)
    operator.launch_seconds.observe(1.0)
    operator.attempts.inc()
    operator.exports.labels(result="succeeded").inc()
    trainer = TrainMetrics("ns", "job")
    trainer.record_progress(step=10, epoch=1, loss=0.5, samples_per_second=100.0)
    trainer.record_eval(0.9)
    trainer.record_checkpoint(seconds=2.0, size=1024)
    return [operator.registry, trainer.registry]


def exported() -> dict[str, set[str]]:
    """Metric family name -> the sample names it really exports."""
    families: dict[str, set[str]] = {}
    for registry in registries():
        for family in registry.collect():
            families.setdefault(family.name, set()).update(sample.name for sample in family.samples)
    return families


def unknown_metrics(dashboard: dict[str, Any], known: set[str]) -> set[str]:
    """Names the dashboard queries that the code does not export."""
    return {name for expr in expressions(dashboard) for name in metric_names(expr)} - known


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = load()
    exprs = expressions(dashboard)
    assert exprs, "the dashboard has no PromQL expressions"
    blind = [expr for expr in exprs if not metric_names(expr)]
    assert not blind, f"expressions naming no edgetune_ metric: {blind}"
    known = set().union(*exported().values())
    unknown = unknown_metrics(dashboard, known)
    assert not unknown, f"unknown metrics {sorted(unknown)}; the code exports {sorted(known)}"


def test_dashboard_covers_every_exported_family() -> None:
    used = {name for expr in expressions(load()) for name in metric_names(expr)}
    families = exported()
    assert families, "the registries exported nothing"
    missing = sorted(family for family, samples in families.items() if not samples & used)
    assert not missing, f"metric families with no panel or variable querying them: {missing}"


def test_the_registries_export_exactly_the_catalog() -> None:
    families = exported()
    assert families.keys() == {metric.name for metric in CATALOG}
    for metric in CATALOG:
        assert metric.series in families[metric.name] or metric.bucket in families[metric.name], metric.name
    # Each from the process the catalog says serves it.
    operator, trainer = registries()
    for registry, source in ((operator, "operator"), (trainer, "trainer")):
        names = {family.name for family in registry.collect()}
        assert names == {metric.name for metric in CATALOG if metric.source == source}, source


def test_alerts_query_only_exported_metrics() -> None:
    known = set().union(*exported().values())
    for rule in alert_rules(AlertSettings()):
        named = metric_names(rule["expr"])
        assert named or "up{" in rule["expr"], f"{rule['alert']}: names no edgetune_ metric"
        assert named <= known, f"{rule['alert']}: unknown {sorted(named - known)}"


def test_panels_have_titles_and_the_datasource_variable() -> None:
    dashboard = load()
    for panel in walk_panels(dashboard["panels"]):
        assert panel.get("title"), f"panel {panel.get('id')} has no title"
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == DATASOURCE, f"panel {panel['title']!r}: datasource {panel.get('datasource')}"
        for target in panel.get("targets", []):
            assert target.get("datasource", DATASOURCE) == DATASOURCE, f"panel {panel['title']!r}: target datasource"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "job"} <= variables.keys()
    assert variables["job"]["includeAll"] and variables["job"]["multi"]


def test_checker_reports_an_unknown_metric() -> None:
    fake = {
        "panels": [
            {
                "type": "row",
                "title": "r",
                "panels": [{"title": "p", "targets": [{"expr": "rate(edgetune_not_a_metric[5m])"}]}],
            }
        ],
        "templating": {"list": [{"type": "query", "name": "v", "query": {"query": "label_values(edgetune_jobs, x)"}}]},
    }
    known = set().union(*exported().values())
    assert unknown_metrics(fake, known) == {"edgetune_not_a_metric"}
