"""bench/common.py's verdicts over repeated pairs, and the start-up breakdown `edgetune run` reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import common

from edgetune_trainer.training.startup import StartupMarks, describe, phase_seconds


def test_alternating_order_swaps_sides_every_repeat() -> None:
    assert list(common.alternating(("a", "b"), 3)) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]


@pytest.mark.parametrize(
    ("ratios", "goal", "op", "verdict"),
    [
        ([0.98, 0.99, 1.01], 0.97, ">=", "PASS"),  # the whole spread clears the goal
        ([0.95, 0.98, 0.99], 0.97, ">=", "MISS"),  # the median clears it, one pair does not
        ([0.90, 0.93, 0.94], 0.97, ">=", "MISS"),
        ([1.2, 1.4, 1.45], 1.5, "<=", "PASS"),
        ([1.2, 1.4, 1.6], 1.5, "<=", "MISS"),
    ],
)
def test_spread_check_passes_only_when_the_spread_clears_the_goal(
    ratios: list[float], goal: float, op: str, verdict: str
) -> None:
    item = common.spread_check("x", "x", ratios, goal, op)
    assert item["verdict"] == verdict
    assert item["value"] == sorted(ratios)[1]
    assert item["spread"] == [min(ratios), max(ratios)]
    median_clears = common.OPS[op](item["value"], goal)
    assert ("the spread does not" in item["figure"]) == (verdict == "MISS" and median_clears)


def test_spread_check_without_a_goal_is_a_reference_and_without_samples_a_skip() -> None:
    assert common.spread_check("x", "x", [1.0, 2.0], None)["verdict"] == ""
    assert common.spread_check("x", "x", [], 1.0)["verdict"] == "SKIP"


def test_startup_phases_line_up_driver_and_rank_0_marks() -> None:
    marks = {
        "ray_starting": 100.0,
        "ray_ready": 103.0,
        "worker_process_started": 106.5,
        "train_function_entered": 110.0,
        "model_loaded": 113.5,
        "data_ready": 113.6,
        "ddp_ready": 113.7,
        "first_step": 114.0,
    }
    seconds = phase_seconds(marks)
    assert list(seconds.values()) == [3.0, 3.5, 3.5, 3.5, 0.1, 0.1, 0.3]
    assert sum(seconds.values()) == pytest.approx(14.0)
    assert describe(seconds).startswith("start-up: Ray start 3.0 s, Train controller and worker processes 3.5 s")
    # A missing mark (no /proc: no process start) folds its phase into the next one.
    del marks["worker_process_started"]
    assert phase_seconds(marks)["worker imports and process group"] == 7.0


def test_startup_marks_are_sent_once_and_keep_the_first_time() -> None:
    marks = StartupMarks.since_process_start()
    marks.mark("first_step")
    first = marks.marks["first_step"]
    marks.mark("first_step")
    assert marks.marks["first_step"] == first
    sent = dict(marks.take()["startup"])
    assert sent["first_step"] == first and "train_function_entered" in sent
    assert sent.get("worker_process_started", 0) <= sent["train_function_entered"]
    assert marks.take() == {}
