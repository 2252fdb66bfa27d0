"""The shipped Grafana dashboard, built with Grafana's grafana-foundation-sdk from the metric catalog.

`python -m edgetune_operator.chartfiles` writes it to charts/edgetune/dashboards/edgetune.json (the chart's
ConfigMap for kube-prometheus-stack's Grafana sidecar); a unit test fails when the committed file drifts, and
tests/observability/ evaluates every query below on a real Prometheus that scraped a real run.
Only `make chart` and the tests import this module: the SDK is a development dependency.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as builder
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from edgetune_trainer import metric_catalog as catalog

UID = "edgetune"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SELECT_NAMESPACE = f'{catalog.NAMESPACE}=~"$namespace"'
SELECT_JOB = f'{SELECT_NAMESPACE}, {catalog.JOB}=~"$job"'
PER_JOB_LEGEND = "{{namespace}}/{{job}}"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelDef:
    """One panel: what it shows, how, and its queries (the test suite evaluates each on a real Prometheus)."""

    title: str
    kind: str  # timeseries | stat | bargauge | table
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    instant: bool = False  # the state now, not a range (tables always)

    @property
    def instant_queries(self) -> bool:
        return self.instant or self.kind == "table"


def selected(metric: catalog.Metric, selector: str = SELECT_JOB) -> str:
    return f"{metric.series}{{{selector}}}"


def quantiles(metric: catalog.Metric, by: str = "", selector: str = "", window: str = "5m") -> tuple[Query, ...]:
    """p50 and p99 of a histogram over `window`."""
    group = ", ".join([*(by.split(", ") if by else []), "le"])
    buckets = f"{metric.bucket}{{{selector}}}" if selector else metric.bucket
    legend = f"{PER_JOB_LEGEND} " if by else ""
    return tuple(
        Query(f"histogram_quantile({q}, sum by ({group}) (rate({buckets}[{window}])))", f"{legend}p{round(q * 100)}")
        for q in (0.5, 0.99)
    )


def rows() -> list[tuple[str, list[PanelDef]]]:
    """The dashboard's rows and panels, top to bottom."""
    per_job = f"{catalog.NAMESPACE}, {catalog.JOB}"
    operator = [
        PanelDef(
            "Jobs by phase",
            "bargauge",
            (Query(f"sum by ({catalog.PHASE}) ({selected(catalog.JOBS, SELECT_NAMESPACE)})", "{{phase}}"),),
            description=catalog.JOBS.help,
            instant=True,
        ),
        PanelDef(
            "Leading replicas",
            "stat",
            (Query(f"sum({catalog.LEADER.series})"),),
            description="Operator replicas holding the leader Lease: 1 is healthy, 0 means nothing reconciles.",
            instant=True,
        ),
        PanelDef(
            "Export results (last 1h)",
            "bargauge",
            (Query(f"sum by ({catalog.RESULT}) (increase({catalog.EXPORTS.series}[1h]))", "{{result}}"),),
            description=catalog.EXPORTS.help,
            instant=True,
        ),
        PanelDef("Launch latency", "timeseries", quantiles(catalog.LAUNCH_SECONDS), "s", catalog.LAUNCH_SECONDS.help),
        PanelDef(
            "Reconcile duration",
            "timeseries",
            quantiles(catalog.RECONCILE_SECONDS),
            "s",
            catalog.RECONCILE_SECONDS.help,
        ),
        PanelDef(
            "Reconciles and errors",
            "timeseries",
            (
                Query(f"sum(rate({catalog.RECONCILE_SECONDS.name}_count[5m]))", "reconciles"),
                Query(f"sum(rate({catalog.RECONCILE_ERRORS.series}[5m]))", "errors"),
                Query(f"sum(rate({catalog.ATTEMPTS.series}[5m]))", "attempts started"),
            ),
            "ops",
            "Per second, over 5 minutes.",
        ),
    ]
    jobs = [
        PanelDef(
            "Job phase",
            "table",
            (Query(f"max by ({per_job}, {catalog.PHASE}) ({selected(catalog.JOB_PHASE)}) == 1"),),
            description=catalog.JOB_PHASE.help,
        ),
        PanelDef(
            "Attempts and the limit",
            "timeseries",
            (
                Query(f"max by ({per_job}) ({selected(catalog.JOB_ATTEMPT)})", f"{PER_JOB_LEGEND} attempt"),
                Query(f"max by ({per_job}) ({selected(catalog.JOB_BACKOFF_LIMIT)}) + 1", f"{PER_JOB_LEGEND} allowed"),
            ),
            description="The current attempt against the attempts runPolicy.backoffLimit allows (unfinished jobs).",
        ),
        PanelDef(
            "Training for",
            "timeseries",
            (Query(f"time() - max by ({per_job}) ({selected(catalog.JOB_RUNNING_SINCE)})", PER_JOB_LEGEND),),
            "s",
            "How long the current attempt has been training (Running jobs).",
        ),
        PanelDef(
            "Export budgets missed",
            "table",
            (Query(f"max by ({per_job}, {catalog.TARGET}) ({selected(catalog.EXPORT_BUDGETS_MISSED)})"),),
            description=catalog.EXPORT_BUDGETS_MISSED.help,
        ),
    ]
    training = [
        PanelDef("Train loss", "timeseries", (Query(selected(catalog.TRAIN_LOSS), PER_JOB_LEGEND),)),
        PanelDef(
            "Eval metric",
            "timeseries",
            (Query(selected(catalog.EVAL_METRIC), PER_JOB_LEGEND),),
            catalog.EVAL_METRIC.unit,
            catalog.EVAL_METRIC.help,
        ),
        PanelDef(
            "Samples/s",
            "timeseries",
            (Query(selected(catalog.TRAIN_SAMPLES_PER_SECOND), PER_JOB_LEGEND),),
            description=catalog.TRAIN_SAMPLES_PER_SECOND.help,
        ),
        PanelDef(
            "Step",
            "timeseries",
            (
                Query(selected(catalog.TRAIN_STEP), f"{PER_JOB_LEGEND} trainer"),
                Query(f"max by ({per_job}) ({selected(catalog.JOB_STEP)})", f"{PER_JOB_LEGEND} status"),
            ),
            description="Optimizer steps: as rank 0 counts them, and as the job's status reports them.",
        ),
        PanelDef("Epoch", "stat", (Query(selected(catalog.TRAIN_EPOCH), PER_JOB_LEGEND),)),
        PanelDef(
            "Checkpoint time",
            "timeseries",
            (
                *quantiles(catalog.CHECKPOINT_SECONDS, per_job, SELECT_JOB, "1h"),
                Query(
                    f"sum by ({per_job}) (rate({catalog.CHECKPOINT_SECONDS.name}_sum{{{SELECT_JOB}}}[1h]))"
                    f" / sum by ({per_job}) (rate({catalog.CHECKPOINT_SECONDS.name}_count{{{SELECT_JOB}}}[1h]))",
                    f"{PER_JOB_LEGEND} mean",
                ),
            ),
            "s",
            catalog.CHECKPOINT_SECONDS.help,
        ),
        PanelDef(
            "Checkpoint size",
            "timeseries",
            (Query(selected(catalog.CHECKPOINT_BYTES), PER_JOB_LEGEND),),
            catalog.CHECKPOINT_BYTES.unit,
        ),
    ]
    return [("Operator", operator), ("Jobs", jobs), ("Training", training)]


def panels() -> Iterator[PanelDef]:
    for _, defs in rows():
        yield from defs


VARIABLES = {
    "namespace": f"label_values({catalog.JOBS.name}, {catalog.NAMESPACE})",
    "job": f"label_values({catalog.JOB_PHASE.name}{{{SELECT_NAMESPACE}}}, {catalog.JOB})",
}

PANEL_BUILDERS = {
    "timeseries": timeseries.Panel,
    "stat": stat.Panel,
    "bargauge": bargauge.Panel,
    "table": table.Panel,
}


def _panel(panel_id: int, panel: PanelDef) -> Builder[model.Panel]:
    built = (
        PANEL_BUILDERS[panel.kind]()
        .id(panel_id)
        .title(panel.title)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .height(8)
        .span(8)  # three panels a row
    )
    if panel.description:
        built = built.description(panel.description)
    for index, query in enumerate(panel.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index))
        if query.legend:
            target = target.legend_format(query.legend)
        if panel.instant_queries:
            target = target.instant()
        if panel.kind == "table":
            target = target.format(PromQueryFormat.TABLE)
        built = built.with_target(target)
    return built


def build_dashboard() -> builder.Dashboard:
    dashboard = (
        builder.Dashboard("edgetune")
        .uid(UID)
        .description("FineTuneJobs: the operator, each job's lifecycle, and training (edgetune_* metrics)")
        .tags(["edgetune", "kubernetes", "training"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(builder.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for name, query in VARIABLES.items():
        dashboard = dashboard.with_variable(
            builder.QueryVariable(name)
            .label(name.capitalize())
            .datasource(DATASOURCE)
            .query(query)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .include_all(True)
            .multi(True)
            .all_value(".*")
        )
    panel_id = 0
    for title, defs in rows():
        panel_id += 1
        dashboard = dashboard.with_row(builder.Row(title).id(panel_id))
        for panel in defs:
            panel_id += 1
            dashboard = dashboard.with_panel(_panel(panel_id, panel))
    return dashboard


def render_dashboard_json() -> str:
    return json.dumps(build_dashboard().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
