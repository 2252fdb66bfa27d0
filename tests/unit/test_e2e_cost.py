"""hack/e2e_cost.py: the kind e2e's reading of what a lost worker cost, from the driver's log."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "e2e_cost.py"
spec = importlib.util.spec_from_file_location("e2e_cost", SCRIPT)
assert spec is not None and spec.loader is not None
e2e_cost = importlib.util.module_from_spec(spec)
sys.modules["e2e_cost"] = e2e_cost  # dataclasses look their module up there
spec.loader.exec_module(e2e_cost)

# The shapes of the real lines (a driver log on kind), Ray's prefixes and colours included.
LOG = """\
2026-12-02 09:53:28,485 edgetune.progress: step 3/300 (1%) epoch 0 loss 0.6926, 448.8 samples/s
\x1b[36m(RayTrainWorker pid=117, ip=10.244.2.4)\x1b[0m checkpoint checkpoint_000000010-6eb0ab: step 10, 1.0 MB in 1.00 s
2026-12-02 09:53:30,018 edgetune.progress: step 12/300 (4%) epoch 0 loss 0.6879, 85.8 samples/s
2026-12-02 09:53:30,293 edgetune.progress: step 15/300 (5%) epoch 0 loss 0.6967, 350.0 samples/s
\x1b[36m(RayTrainWorker pid=301, ip=10.244.2.9)\x1b[0m resuming from s3://edgetune/jobs/default/f/checkpoints/\
checkpoint_000000010-6eb0ab (step 10, epoch 0)
2026-12-02 09:54:10,001 edgetune.progress: step 12/300 (4%) epoch 0 loss 0.6901, 80.1 samples/s
2026-12-02 09:54:12,001 edgetune.progress: step 300/300 (100%) epoch 11 loss 0.2, 80.1 samples/s
"""


def run(text: str, interval: int) -> tuple[int, str]:
    stdin, stdout = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO(text), io.StringIO()
    try:
        code = e2e_cost.main(["--interval", str(interval)])
        return code, sys.stdout.getvalue()
    finally:
        sys.stdin, sys.stdout = stdin, stdout


def test_a_restart_reports_the_steps_done_twice() -> None:
    code, out = run(LOG, interval=10)
    assert code == 0
    assert "reached step 15, resumed from step 10" in out and "5 step(s) redone" in out


@pytest.mark.parametrize(("text", "interval"), [(LOG, 4), (LOG.split("\x1b[36m(RayTrainWorker pid=301")[0], 10)])
def test_more_than_an_interval_or_no_restart_at_all_fails(text: str, interval: int) -> None:
    assert run(text, interval)[0] == 1


def test_the_first_start_of_a_resumed_attempt_is_not_a_restart() -> None:
    first = "(RayTrainWorker pid=1) resuming from s3://b/c/checkpoint_000000040-aa (step 40, epoch 1)\n"
    assert [r.resumed for r in e2e_cost.restarts((first + LOG).splitlines())] == [10]
