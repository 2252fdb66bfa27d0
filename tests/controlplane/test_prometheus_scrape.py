"""The shipped dashboard and alerts, evaluated by a real Prometheus on a real run.

A real operator reconciles a FineTuneJob on the test API server; its RayJob is trained to the end by real Ray
(tests/raybridge.py), and the export Job runs on a KWOK edge node. A real Prometheus scrapes the operator's
/metrics and rank 0's training metrics every second, and loads the chart's alerts as `helm template`
renders them. Then every panel's PromQL (dashboard.py, the source of the committed JSON) is asked over the
run's time range, as Grafana would: a query that errors or returns no finite value fails the test with its
panel's title. Every alert rule must evaluate without error, and none may fire on this healthy job.

EDGETUNE_DASHBOARD_SNAPSHOT=<file.json> keeps the answers, for docs/observability.md's picture
(hack/draw-dashboard.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from ftjcluster import Cluster, eventually, phase_is
from kubeenv import ControlPlane
from operatorproc import running_operator
from promtool import PrometheusServer, running_prometheus, write_rule_file
from raybridge import run_rayjob_locally, stage_inputs
from s3server import S3Server, free_port

from edgetune_operator.alerts import alert_rules, chart_settings
from edgetune_operator.dashboard import VARIABLES, PanelDef, panels
from edgetune_trainer import metric_catalog as catalog

pytestmark = [pytest.mark.controlplane, pytest.mark.trainer, pytest.mark.slow]
JOB = "scraped"
TRAINING_SCRAPE_JOB = "edgetune-training"


def job_document(bucket: str, s3: S3Server) -> dict[str, Any]:
    return {
        "apiVersion": "edgetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": JOB},
        "spec": {
            "model": {"source": f"s3://{bucket}/models/tiny-bert", "task": "text-classification", "numLabels": 2},
            "dataset": {"source": f"s3://{bucket}/data/reviews.jsonl", "validationFraction": 0.2, "maxLength": 32},
            "training": {"epochs": 2, "batchSizePerWorker": 16, "learningRate": 0.001, "seed": 5},
            "resources": {"workers": 2, "cpusPerWorker": 0.5},
            "storage": {"uri": f"s3://{bucket}/jobs", "endpoint": s3.endpoint, "credentialsSecret": "s3"},
            "checkpoint": {"everySteps": 5, "keep": 2},
            "export": [
                {
                    "name": "edge-int8",
                    "quantize": "int8",
                    "nodeSelector": {"edgetune.dev/edge": "true"},
                    "tolerations": [{"key": "edgetune.dev/edge", "operator": "Exists", "effect": "NoSchedule"}],
                }
            ],
        },
    }


def scrape_configs(operator_port: int, training_port: int) -> list[dict[str, Any]]:
    """What the chart's ServiceMonitor and PodMonitor make of the two endpoints (honorLabels, the job label)."""
    return [
        {
            "job_name": name,
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        }
        for name, port in ((catalog.OPERATOR_SCRAPE_JOB, operator_port), (TRAINING_SCRAPE_JOB, training_port))
    ]


def substitute(expr: str, namespace: str) -> str:
    """Grafana's variables, as a user who picked this namespace and job would have them."""
    return expr.replace("$namespace", namespace).replace("$job", JOB)


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for series in result for _, v in series["values"] if math.isfinite(float(v))]


def ask_every_panel(
    prometheus: PrometheusServer, namespace: str, start: float, end: float
) -> tuple[dict[str, Any], list[str]]:
    """Each panel's queries over the run: the answers, and what is wrong with them (panel title first)."""
    answers: dict[str, Any] = {}
    problems: list[str] = []
    for panel in panels():
        answers[panel.title] = []
        for query in panel.queries:
            expr = substitute(query.expr, namespace)
            try:
                if panel.instant_queries:  # as Grafana asks them: at the end of the range
                    result = [
                        {"metric": item["metric"], "values": [item["value"]]} for item in prometheus.query(expr, at=end)
                    ]
                else:
                    result = prometheus.query_range(expr, start, end)
            except Exception as err:  # the API's 400 names the PromQL error
                problems.append(f"{panel.title!r}: {expr} -> {err}")
                continue
            if not finite_values(result):
                problems.append(f"{panel.title!r}: {expr} -> no finite value in {len(result)} series")
            answers[panel.title].append(
                {"expr": expr, "legend": query.legend, "instant": panel.instant_queries, "result": result}
            )
    return answers, problems


def panel_values(answers: dict[str, Any], panel: PanelDef, query: int = 0) -> list[float]:
    return finite_values(answers[panel.title][query]["result"])


def test_every_dashboard_query_answers_from_a_real_scrape(
    control_plane: ControlPlane,
    namespace: str,
    cluster: Cluster,
    s3_server: S3Server,
    bucket: str,
    tiny_bert: Path,
    reviews: Path,
    tmp_path: Path,
) -> None:
    stage_inputs(s3_server, bucket, cluster, tiny_bert, reviews)
    assert reviews.name == "reviews.jsonl"
    rules = write_rule_file(tmp_path)
    training_port = free_port()
    with running_operator(control_plane, namespace, tmp_path) as operator:
        configs = scrape_configs(operator.metrics_port, training_port)
        with running_prometheus(tmp_path, configs, [rules]) as prometheus:
            # The zero state first: rates and quantiles need a sample from before the job's first events.
            prometheus.wait_for("the operator's first scrape", f'up{{job="{catalog.OPERATOR_SCRAPE_JOB}"}} == 1')
            start = time.time() - 2
            cluster.apply(job_document(bucket, s3_server))
            rayjob = eventually("RayJob", lambda: cluster.rayjobs(JOB))[0]
            cluster.play_kuberay(rayjob["metadata"]["name"], "Running", "RUNNING")
            eventually("Running", phase_is(cluster, JOB, "Running"))
            run_rayjob_locally(
                control_plane, cluster, rayjob, tmp_path, metrics_port=training_port, check_token_refusal=False
            )
            cluster.play_kuberay(rayjob["metadata"]["name"], "Complete", "SUCCEEDED")
            eventually("Succeeded after the export", phase_is(cluster, JOB, "Succeeded"), timeout=90)
            prometheus.wait_for(
                "the finished export in a scrape", f'{catalog.EXPORT_BUDGETS_MISSED.series}{{job="{JOB}"}}'
            )
            time.sleep(2)  # one more scrape and rule evaluation of the final state
            end = time.time()

            answers, problems = ask_every_panel(prometheus, namespace, start, end)
            variables = {
                "namespace": prometheus.label_values(catalog.NAMESPACE, catalog.JOBS.series),
                "job": prometheus.label_values(catalog.JOB, f'{catalog.JOB_PHASE.series}{{namespace="{namespace}"}}'),
            }
            rule_groups = prometheus.get("/api/v1/rules")["groups"]
            alerts = prometheus.get("/api/v1/alerts")["alerts"]

    if snapshot := os.environ.get("EDGETUNE_DASHBOARD_SNAPSHOT"):
        Path(snapshot).write_text(json.dumps({"start": start, "end": end, "panels": answers}, indent=1))
    assert not problems, "panels without data:\n" + "\n".join(problems)
    assert VARIABLES.keys() == variables.keys()
    assert namespace in variables["namespace"] and JOB in variables["job"], variables

    # The numbers make sense for this run (2 epochs, 2 workers, one attempt, the export within its budgets).
    by_title = {panel.title: panel for panel in panels()}
    total_steps = cluster.status(JOB)["progress"]["totalSteps"]
    assert max(panel_values(answers, by_title["Step"], 0)) == total_steps  # rank 0's own count
    assert max(panel_values(answers, by_title["Step"], 1)) <= total_steps  # the status, as the operator saw it
    assert all(0 <= v <= 1 for v in panel_values(answers, by_title["Eval metric"]))
    assert all(v > 0 for v in panel_values(answers, by_title["Train loss"]))
    assert max(panel_values(answers, by_title["Epoch"])) == 1
    assert set(panel_values(answers, by_title["Leading replicas"])) == {1.0}
    assert max(panel_values(answers, by_title["Attempts and the limit"], 0)) == 1
    assert 0 < max(panel_values(answers, by_title["Launch latency"])) < 60
    assert [s["metric"]["phase"] for s in answers["Job phase"][0]["result"]] == ["Succeeded"]
    jobs_by_phase = {s["metric"]["phase"]: finite_values([s]) for s in answers["Jobs by phase"][0]["result"]}
    assert jobs_by_phase == {"Succeeded": [1.0]}, jobs_by_phase
    # Over the run (the range the "Training for" panel draws), the job trained.
    assert max(panel_values(answers, by_title["Training for"])) > 0
    # Both results' series exist from the operator's start, so the first export counts as an increase.
    exported = {s["metric"]["result"]: finite_values([s]) for s in answers["Export results (last 1h)"][0]["result"]}
    assert max(exported["succeeded"]) > 0.5 and max(exported["failed"]) == 0, exported
    assert set(panel_values(answers, by_title["Export budgets missed"])) == {0.0}

    rules = [rule for group in rule_groups for rule in group["rules"]]
    assert len(rules) == len(alert_rules(chart_settings())) and all(r["health"] == "ok" for r in rules), rules
    assert alerts == [], alerts
