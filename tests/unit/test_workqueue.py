"""The operator's work queue: one waiting entry per job, a job re-queued while its reconcile runs is
reconciled again, a failing reconcile does not stop its worker."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from edgetune_operator import memory
from edgetune_operator.workqueue import WorkQueue


def wait_until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_events_for_a_waiting_job_make_one_reconcile() -> None:
    done: list[tuple[str, str]] = []
    gate = threading.Event()

    def reconcile(namespace: str, name: str) -> None:
        gate.wait(5)
        done.append((namespace, name))

    queue = WorkQueue(reconcile, workers=1).start()
    queue.add("ns", "busy")  # the one worker takes it and waits at the gate
    wait_until(lambda: len(queue) == 0)
    for _ in range(5):
        queue.add("ns", "a")
        queue.add("ns", "b")
    assert len(queue) == 2
    gate.set()
    wait_until(lambda: len(done) == 3)
    time.sleep(0.1)
    assert done == [("ns", "busy"), ("ns", "a"), ("ns", "b")]
    queue.stop()


def test_a_job_added_while_its_reconcile_runs_is_reconciled_again() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def reconcile(namespace: str, name: str) -> None:
        runs.append(name)
        started.set()
        release.wait(5)

    queue = WorkQueue(reconcile, workers=2).start()
    queue.add("ns", "a")
    started.wait(5)
    queue.add("ns", "a")  # a change raced the running reconcile: it must be seen by another
    release.set()
    wait_until(lambda: len(runs) == 2)
    queue.stop()


def test_a_failing_reconcile_is_logged_and_the_worker_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def reconcile(namespace: str, name: str) -> None:
        if name == "bad":
            raise RuntimeError("boom")
        done.append(name)

    queue = WorkQueue(reconcile, workers=1).start()
    with caplog.at_level(logging.ERROR, logger="edgetune.operator"):
        queue.add("ns", "bad")
        queue.add("ns", "good")
        wait_until(lambda: done == ["good"])
    assert "reconcile of ns/bad failed" in caplog.text and "boom" in caplog.text
    queue.stop()


def test_the_allocator_settings_apply_on_this_glibc_system() -> None:
    assert memory._libc() is not None  # Debian, like the operator image
    memory.limit_arenas()
    memory.release_free_memory()


def test_event_keys_go_before_the_resyncs() -> None:
    done: list[str] = []
    gate = threading.Event()

    def reconcile(namespace: str, name: str) -> None:
        gate.wait(5)
        done.append(name)

    queue = WorkQueue(reconcile, workers=1).start()
    queue.add("ns", "busy")
    wait_until(lambda: len(queue) == 0)
    for name in ("settled-1", "settled-2", "settled-3"):
        queue.add("ns", name, background=True)
    queue.add("ns", "new")
    queue.add("ns", "settled-3")  # an event for a job the resync queued: it moves up
    gate.set()
    wait_until(lambda: len(done) == 5)
    assert done == ["busy", "new", "settled-3", "settled-1", "settled-2"]
    queue.stop()
