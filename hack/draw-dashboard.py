#!/usr/bin/env python3
"""Draw the dashboard's panels from a real run's answers, for docs/observability.md.

    EDGETUNE_DASHBOARD_SNAPSHOT=/tmp/dash.json .venv/bin/python -m pytest tests/controlplane/test_prometheus_scrape.py
    .venv/bin/python hack/draw-dashboard.py /tmp/dash.json docs/images/dashboard.png

The snapshot holds, for each panel of edgetune_operator.dashboard, what Prometheus answered to each of its
queries over the run (query_range, 1 s steps). Panels are drawn in the dashboard's order and titles; time
series as lines, the others (stat, bar gauge, table) as their latest values. matplotlib's object API with
the Agg canvas: no GUI backend, no global figure state. Instant panels (tables, the operator's state) show
the end of the run, after the job succeeded, as Grafana would at that moment.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edgetune_operator.dashboard import PanelDef, rows

COLUMNS = 4
UNIT_LABELS = {"s": "seconds", "bytes": "bytes", "ops": "per second", "percentunit": "fraction"}


def legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{(\w+)\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("instance",)) or "value"


def series(answer: dict[str, Any], start: float) -> list[tuple[str, list[float], list[float]]]:
    drawn = []
    for result in answer["result"]:
        points = [(float(t) - start, float(v)) for t, v in result["values"] if math.isfinite(float(v))]
        if points:
            drawn.append((legend(answer["legend"], result["metric"]), [p[0] for p in points], [p[1] for p in points]))
    return drawn


def latest(answer: dict[str, Any]) -> list[tuple[str, float]]:
    """Each series' last value: an instant query's answer, or a range's last non-null, as Grafana reduces it."""
    values = []
    for result in answer["result"]:
        finite = [float(v) for _, v in result["values"] if math.isfinite(float(v))]
        if finite:
            values.append((legend(answer["legend"], result["metric"]), finite[-1]))
    return values


def draw_panel(axes: Axes, panel: PanelDef, answers: list[dict[str, Any]], start: float) -> None:
    axes.set_title(panel.title, fontsize=9, loc="left")
    axes.tick_params(labelsize=7)
    if panel.kind == "timeseries":
        for answer in answers:
            for name, times, values in series(answer, start):
                axes.plot(times, values, linewidth=1.2, label=name[:40])
        axes.set_xlabel("seconds into the run", fontsize=7)
        axes.set_ylabel(UNIT_LABELS.get(panel.unit, ""), fontsize=7)
        if axes.lines:
            axes.legend(fontsize=6, loc="best")
        return
    values = [item for answer in answers for item in latest(answer)]
    labels = [name[:30] for name, _ in values]
    axes.barh(labels, [value for _, value in values], color="#3b7dd8")
    for index, (_, value) in enumerate(values):
        axes.text(value, index, f" {value:g}", va="center", fontsize=7)
    axes.set_xlim(0, max([value for _, value in values] + [1]) * 1.3)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    snapshot = json.loads(Path(argv[0]).read_text())
    layout = [(title, panel) for title, panels in rows() for panel in panels]
    count = len(layout)
    height = math.ceil(count / COLUMNS)
    figure = Figure(figsize=(4.2 * COLUMNS, 2.8 * height), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle("edgetune dashboard: one real run (tiny BERT, 2 Ray workers, scraped every second)", fontsize=11)
    grid = figure.subplots(height, COLUMNS, squeeze=False)
    for index, (row, panel) in enumerate(layout):
        axes = grid[index // COLUMNS][index % COLUMNS]
        draw_panel(axes, panel, snapshot["panels"][panel.title], snapshot["start"])
        axes.set_title(f"{row}: {panel.title}", fontsize=9, loc="left")
    for index in range(count, height * COLUMNS):
        grid[index // COLUMNS][index % COLUMNS].set_visible(False)
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    print(f"wrote {out} ({out.stat().st_size} bytes, {count} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
