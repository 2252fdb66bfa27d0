"""The chart's alerts, as `helm template` renders them: `promtool check rules` passes, and `promtool test rules`
feeds each alert realistic series and asserts when it fires, with which labels, and that every alert stays
silent on a healthy job (promtool's clock starts at 0: `time()` at eval_time 30m is 1800)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from promtool import promtool, write_rule_file

from edgetune_operator.alerts import AlertSettings, alert_rules, chart_settings
from edgetune_trainer import metric_catalog as catalog

OPERATOR = 'instance="10.0.0.5:8080", pod="edgetune-6c9f-abcde"'  # the scrape target's own labels
ALERTS = [rule["alert"] for rule in alert_rules(chart_settings())]
RUNBOOKS = AlertSettings().runbook_base_url  # the chart's default runbookBaseUrl


def series(metric: str, labels: str, values: str, operator: str = OPERATOR) -> dict[str, str]:
    return {"series": f"{metric}{{{labels}, {operator}}}", "values": values}


def job(name: str) -> str:
    return f'namespace="ml", job="{name}"'


def healthy_operator(minutes: int = 60) -> list[dict[str, str]]:
    """One replica up and leading, reconciling every few seconds without errors."""
    return [
        {"series": f'up{{job="{catalog.OPERATOR_SCRAPE_JOB}", {OPERATOR}}}', "values": f"1x{minutes}"},
        series(catalog.LEADER.series, 'job="edgetune-operator"', f"1x{minutes}"),
        series(f"{catalog.RECONCILE_SECONDS.name}_count", 'job="edgetune-operator"', f"0+20x{minutes}"),
        series(catalog.RECONCILE_ERRORS.series, 'job="edgetune-operator"', f"0x{minutes}"),
    ]


def running(
    name: str,
    steps: str,
    since: int = 0,
    attempt: str = "1x60",
    limit: str = "3x60",
    present: str = "1x60",
    operator: str = OPERATOR,
) -> list[dict[str, str]]:
    """A Running job's operator series; `present` is the phase series' values (its gaps are everyone's)."""
    # The start time, present exactly when the phase is: each "1xN" run of the phase becomes "<since>xN".
    since_values = " ".join(f"{since}x{t[2:]}" if t.startswith("1x") else t for t in present.split())
    return [
        series(catalog.JOB_PHASE.series, f'{job(name)}, phase="Running"', present, operator),
        series(catalog.JOB_RUNNING_SINCE.series, job(name), since_values, operator),
        series(catalog.JOB_STEP.series, job(name), steps, operator),
        series(catalog.JOB_ATTEMPT.series, job(name), attempt, operator),
        series(catalog.JOB_BACKOFF_LIMIT.series, job(name), limit, operator),
    ]


NEW_LEADER = 'instance="10.0.0.9:8080", pod="edgetune-6c9f-fghij"'  # the replica that took over


def fires(
    alert: str, at: str, labels: dict[str, str] | None = None, value: str = "1", stalled_minutes: str = "15"
) -> dict[str, Any]:
    """The alert fires at `at`, once, with these labels; its annotations rendered from them and `value`."""
    labels = labels or {}
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {"severity": rule(alert)["labels"]["severity"], **labels},
                        "exp_annotations": annotations(alert, labels, value, stalled_minutes)}],
    }  # fmt: skip


def annotations(alert: str, labels: dict[str, str], value: str, stalled_minutes: str) -> dict[str, str]:
    """What Prometheus's templating should make of the rule's annotations."""
    expanded = {}
    for key, text in rule(alert)["annotations"].items():
        for name, label in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", label)
        text = text.replace("{{ $value | humanizePercentage }}", value).replace("{{ $value }}", value)
        text = text.replace("__EDGETUNE_STALLED_MINUTES__", stalled_minutes).replace(
            "__EDGETUNE_RUNBOOK_BASE_URL__", RUNBOOKS
        )
        expanded[key] = text
    return expanded


def rule(alert: str) -> dict[str, Any]:
    return next(r for r in alert_rules(chart_settings()) if r["alert"] == alert)


def silent(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def ml(name: str) -> dict[str, str]:
    return {"namespace": "ml", "job": name}


def alert_cases() -> list[dict[str, Any]]:
    return [
        {
            "name": "a healthy job and operator: every alert stays silent",
            "interval": "1m",
            "input_series": [
                *healthy_operator(),
                *running("steady", "0+10x60"),
                series(catalog.JOB_PHASE.series, f'{job("done")}, phase="Succeeded"', "1x60"),
                series(catalog.EXPORT_BUDGETS_MISSED.series, f'{job("done")}, target="edge-int8"', "0x60"),
            ],
            "alert_rule_test": [silent(alert, at) for alert in ALERTS for at in ("10m", "30m", "59m")],
        },
        {
            "name": "progress stops at 20m: stalled once 15 minutes pass with no step; a new attempt gets its grace",
            "interval": "1m",
            "input_series": [
                *healthy_operator(),
                *running("stuck", "0+10x20 200x40"),
                # An attempt that started training at t=40m and has made no step yet.
                *running("starting", "0x60", since=40 * 60),
            ],
            "alert_rule_test": [
                silent("EdgetuneJobStalled", "30m"),
                fires("EdgetuneJobStalled", "40m", ml("stuck")),
                # "starting" is 10 and 14 minutes into its attempt: only "stuck" is stalled.
                fires("EdgetuneJobStalled", "50m", ml("stuck")),
                fires("EdgetuneJobStalled", "54m", ml("stuck")),
                # 18 minutes in, "starting" has still not made a step: both are stalled.
                {
                    **fires("EdgetuneJobStalled", "58m", ml("starting")),
                    "exp_alerts": [
                        *fires("EdgetuneJobStalled", "58m", ml("starting"))["exp_alerts"],
                        *fires("EdgetuneJobStalled", "58m", ml("stuck"))["exp_alerts"],
                    ],
                },
            ],
        },
        {
            "name": "a new leader's series and an operator outage are not stalls; a stall after the outage is",
            "interval": "1m",
            "input_series": [
                {"series": f'up{{job="{catalog.OPERATOR_SCRAPE_JOB}", {OPERATOR}}}', "values": "1x60"},
                # The leader changes at 30m: the step goes on in the new replica's series, no gap.
                *running("failover", "0+10x29 stale", present="1x29 stale"),
                *running("failover", "_x30 300+10x29", present="_x30 1x29", operator=NEW_LEADER),
                # No operator series at all from 21m to 40m (an outage), training going on meanwhile.
                *running("outage", "0+10x20 stale", present="1x20 stale"),
                *running("outage", "_x40 400+10x19", present="_x40 1x19", operator=NEW_LEADER),
                # The same outage, but the job is really stuck when the series come back.
                *running("stuck-after", "0+10x20 stale", present="1x20 stale"),
                *running("stuck-after", "_x40 200x19", present="_x40 1x19", operator=NEW_LEADER),
            ],
            "alert_rule_test": [
                silent("EdgetuneJobStalled", "35m"),
                silent("EdgetuneJobStalled", "41m"),  # an alert on changes() alone would fire here
                silent("EdgetuneJobStalled", "50m"),
                fires("EdgetuneJobStalled", "58m", ml("stuck-after")),  # 15 minutes seen, none with a step
            ],
        },
        {
            "name": "stalled on a 5 minute window from the Helm value",
            "interval": "1m",
            "input_series": [*healthy_operator(), *running("stuck", "0+10x20 200x40")],
            "alert_rule_test": [
                silent("EdgetuneJobStalled", "23m"),  # the 19m -> 20m step is inside (18m, 23m]
                fires("EdgetuneJobStalled", "26m", ml("stuck"), stalled_minutes="5"),
            ],
            "rule_file": "five-minutes",
        },
        {
            "name": "a failed job pages after a minute; a succeeded one never",
            "interval": "1m",
            "input_series": [
                *healthy_operator(10),
                series(catalog.JOB_PHASE.series, f'{job("broken")}, phase="Failed"', "_x3 1x7"),
                series(catalog.JOB_PHASE.series, f'{job("fine")}, phase="Succeeded"', "1x10"),
            ],
            "alert_rule_test": [
                silent("EdgetuneJobFailed", "3m"),
                fires("EdgetuneJobFailed", "5m", ml("broken")),
            ],
        },
        {
            "name": "the last attempt backoffLimit allows; a job allowed no retries is not paged",
            "interval": "1m",
            "input_series": [
                *healthy_operator(10),
                *running("flaky", "0+10x60", attempt="1 1 1 2 2 2 3 3 3 3", limit="2x10"),
                *running("once", "0+10x60", attempt="1x10", limit="0x10"),
            ],
            "alert_rule_test": [
                silent("EdgetuneJobBackoffNearlyExhausted", "5m"),
                fires("EdgetuneJobBackoffNearlyExhausted", "7m", ml("flaky"), value="3"),
            ],
        },
        {
            "name": "an export that missed two budgets; its sibling met them",
            "interval": "1m",
            "input_series": [
                *healthy_operator(10),
                series(catalog.EXPORT_BUDGETS_MISSED.series, f'{job("bert")}, target="edge-int8"', "2x10"),
                series(catalog.EXPORT_BUDGETS_MISSED.series, f'{job("bert")}, target="edge-fp32"', "0x10"),
            ],
            "alert_rule_test": [
                fires("EdgetuneExportBudgetMissed", "1m", {**ml("bert"), "target": "edge-int8"}, value="2")
            ],
        },
        {
            "name": "the operator stops answering scrapes at 10m, and nothing reports at all",
            "interval": "1m",
            "input_series": [
                {"series": f'up{{job="{catalog.OPERATOR_SCRAPE_JOB}", {OPERATOR}}}', "values": "1x10 0x20"},
            ],
            "alert_rule_test": [
                silent("EdgetuneOperatorDown", "9m"),
                silent("EdgetuneOperatorDown", "13m"),  # pending: down for less than 5 minutes
                fires("EdgetuneOperatorDown", "17m"),
            ],
        },
        {
            "name": "up but not leading (the Lease held elsewhere, or never won)",
            "interval": "1m",
            "input_series": [
                {"series": f'up{{job="{catalog.OPERATOR_SCRAPE_JOB}", {OPERATOR}}}', "values": "1x20"},
                series(catalog.LEADER.series, 'job="edgetune-operator"', "1x5 0x15"),
            ],
            "alert_rule_test": [
                silent("EdgetuneOperatorNotLeading", "8m"),
                silent("EdgetuneOperatorDown", "15m"),
                fires("EdgetuneOperatorNotLeading", "15m"),
            ],
        },
        {
            "name": "one reconcile in four fails, for longer than 15 minutes",
            "interval": "1m",
            "input_series": [
                {"series": f'up{{job="{catalog.OPERATOR_SCRAPE_JOB}", {OPERATOR}}}', "values": "1x40"},
                series(f"{catalog.RECONCILE_SECONDS.name}_count", 'job="edgetune-operator"', "0+20x40"),
                series(catalog.RECONCILE_ERRORS.series, 'job="edgetune-operator"', "0x5 0+5x35"),
            ],
            "alert_rule_test": [
                silent("EdgetuneReconcileErrors", "15m"),
                fires("EdgetuneReconcileErrors", "30m", value="25%"),
            ],
        },
    ]


def rendered_rule_files(folder: Path) -> dict[str, Path]:
    default = folder / "default"
    five = folder / "five-minutes"
    default.mkdir()
    five.mkdir()
    return {
        "default": write_rule_file(default),
        "five-minutes": write_rule_file(five, {"alerts": {"stalledMinutes": 5}}),
    }


def test_the_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = rendered_rule_files(tmp_path)
    for path in rules.values():
        checked = promtool("check", "rules", "--lint-fatal", str(path), cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout, checked.stdout


def test_each_alert_fires_when_it_should_and_stays_silent_on_a_healthy_job(tmp_path: Path) -> None:
    rules = rendered_rule_files(tmp_path)
    tested = {test["alertname"] for case in alert_cases() for test in case["alert_rule_test"] if test["exp_alerts"]}
    assert tested == set(ALERTS), f"alerts with no firing test: {set(ALERTS) - tested}"
    for key, rule_file in rules.items():
        # promtool applies a file's rule_files to all its tests: one test file per rendering of the rules.
        cases = [case for case in alert_cases() if case.pop("rule_file", "default") == key]
        test_file = rule_file.parent / "tests.yaml"
        document = {"rule_files": [rule_file.name], "evaluation_interval": "1m", "tests": cases}
        test_file.write_text(yaml.safe_dump(document, sort_keys=False, width=200))
        result = promtool("test", "rules", test_file.name, cwd=rule_file.parent)
        assert result.returncode == 0, f"{key} rules:\n{result.stdout}{result.stderr}"
        assert "SUCCESS" in result.stdout, result.stdout


def test_a_broken_expectation_makes_promtool_fail(tmp_path: Path) -> None:
    """The harness can fail: an alert expected where the series say otherwise is reported."""
    rule_file = rendered_rule_files(tmp_path)["default"]
    case = {
        "interval": "1m",
        "input_series": [*healthy_operator(10), *running("steady", "0+10x60")],
        "alert_rule_test": [fires("EdgetuneJobStalled", "5m", ml("steady"))],
    }
    test_file = rule_file.parent / "tests.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rule_file.name], "tests": [case]}, sort_keys=False))
    result = promtool("test", "rules", test_file.name, cwd=rule_file.parent)
    assert result.returncode != 0 and "EdgetuneJobStalled" in result.stdout + result.stderr
