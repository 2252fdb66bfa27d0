"""The chart's Prometheus alerting rules, built from the metric catalog (edgetune_trainer.metric_catalog).

`alert_groups(settings)` is a pure function: settings in, the PrometheusRule's `spec.groups` out. The chart
ships it with Helm-value placeholders (`chart_settings()`) that its template replaces; tests render the chart
and feed the result to promtool and to a real Prometheus. Each alert's runbook is a section of
docs/observability.md, linked by the `runbook_url` annotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgetune_trainer import metric_catalog as catalog

GROUP = "edgetune"
PER_JOB = f"{catalog.NAMESPACE}, {catalog.JOB}"


@dataclass(frozen=True)
class AlertSettings:
    """Strings, because the chart's copy holds placeholders the Helm template fills in."""

    stalled_minutes: str = "15"  # no progress this long while Running
    runbook_base_url: str = "https://github.com/edgetune/edgetune/blob/main/docs/observability.md"


# What the chart's template replaces (charts/edgetune/templates/prometheusrule.yaml), value by value.
PLACEHOLDERS = {
    "stalled_minutes": "__EDGETUNE_STALLED_MINUTES__",
    "runbook_base_url": "__EDGETUNE_RUNBOOK_BASE_URL__",
}


def chart_settings() -> AlertSettings:
    return AlertSettings(**PLACEHOLDERS)


def per_job(metric: catalog.Metric, selector: str = "") -> str:
    """One series per job, whichever operator replica or scrape target reported it."""
    braces = f"{{{selector}}}" if selector else ""
    return f"max by ({PER_JOB}) ({metric.series}{braces})"


def _alert(
    name: str, expr: str, for_: str, severity: str, summary: str, description: str, settings: AlertSettings
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{settings.runbook_base_url}#{name.lower()}",
        },
    }


def alert_rules(settings: AlertSettings) -> list[dict[str, Any]]:
    phase, job = catalog.JOB_PHASE, "{{ $labels.namespace }}/{{ $labels.job }}"
    stalled = settings.stalled_minutes
    return [
        _alert(
            "EdgetuneJobFailed",
            per_job(phase, 'phase="Failed"') + " == 1",
            "1m",
            "warning",
            f"FineTuneJob {job} failed",
            f"FineTuneJob {job} is Failed: its Failed condition says why (kubectl describe finetunejob).",
            settings,
        ),
        _alert(
            "EdgetuneJobStalled",
            # Running for longer than the window, and the reported step has not moved within it. The step is
            # merged across operator replicas and pods first (a new leader's series continues the old one), and
            # must have been seen through the whole window, so that data returning after a gap (an operator or
            # Prometheus outage, a relaunch) is not read as a stall.
            per_job(phase, 'phase="Running"') + " == 1"
            f" and on ({PER_JOB}) (time() - {per_job(catalog.JOB_RUNNING_SINCE)}) > {stalled} * 60"
            f" and on ({PER_JOB}) changes(({per_job(catalog.JOB_STEP)})[{stalled}m:1m]) == 0"
            f" and on ({PER_JOB}) count_over_time(({per_job(catalog.JOB_STEP)})[{stalled}m:1m]) >= {stalled}",
            "0m",
            "warning",
            f"FineTuneJob {job} has made no progress for {stalled} minutes",
            f"FineTuneJob {job} is Running but its reported step has not moved for {stalled} minutes: a hung"
            " collective, a stuck data read, or workers waiting for a peer that never comes.",
            settings,
        ),
        _alert(
            "EdgetuneJobBackoffNearlyExhausted",
            # The attempt launching or training now is the last one runPolicy.backoffLimit allows (jobs allowed
            # retries; exports do not use them, so an exporting job reports no attempt).
            f"{per_job(catalog.JOB_ATTEMPT)} >= on ({PER_JOB}) ({per_job(catalog.JOB_BACKOFF_LIMIT)} + 1)"
            f" and on ({PER_JOB}) {per_job(catalog.JOB_BACKOFF_LIMIT)} > 0",
            "0m",
            "warning",
            f"FineTuneJob {job} is on its last attempt",
            f"FineTuneJob {job} runs attempt {{{{ $value }}}}, the last its runPolicy.backoffLimit allows:"
            " one more failure fails the job.",
            settings,
        ),
        _alert(
            "EdgetuneExportBudgetMissed",
            f"max by ({PER_JOB}, {catalog.TARGET}) ({catalog.EXPORT_BUDGETS_MISSED.series}) > 0",
            "0m",
            "warning",
            f"Export {{{{ $labels.target }}}} of {job} missed its budgets",
            f"Export target {{{{ $labels.target }}}} of FineTuneJob {job} missed {{{{ $value }}}} of its budgets"
            " (status.exports[].missedBudgets names them).",
            settings,
        ),
        _alert(
            "EdgetuneOperatorDown",
            f'absent(up{{job="{catalog.OPERATOR_SCRAPE_JOB}"}} == 1)',
            "5m",
            "critical",
            "The edgetune operator is down",
            "No edgetune operator replica has answered a scrape for 5 minutes: FineTuneJobs are not reconciled.",
            settings,
        ),
        _alert(
            "EdgetuneOperatorNotLeading",
            f"max({catalog.LEADER.series}) == 0",
            "5m",
            "critical",
            "No edgetune operator replica is leading",
            "Operator replicas are up but none has held the leader Lease for 5 minutes: nothing reconciles.",
            settings,
        ),
        _alert(
            "EdgetuneReconcileErrors",
            f"sum(rate({catalog.RECONCILE_ERRORS.series}[10m]))"
            f" / sum(rate({catalog.RECONCILE_SECONDS.name}_count[10m])) > 0.1",
            "15m",
            "warning",
            "edgetune reconciles are failing",
            "{{ $value | humanizePercentage }} of the operator's reconciles failed over 10 minutes"
            " (the operator's log names each failure).",
            settings,
        ),
    ]


def alert_groups(settings: AlertSettings) -> list[dict[str, Any]]:
    return [{"name": GROUP, "rules": alert_rules(settings)}]
