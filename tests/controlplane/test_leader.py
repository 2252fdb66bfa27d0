"""LeaseElector against the real API server: one holder at a time, takeover after expiry, release."""

from __future__ import annotations

import threading
import time

import kubernetes.client
import pytest
from kubeenv import unique_name

from edgetune_operator.leader import LeaseElector, LeaseTiming

pytestmark = pytest.mark.controlplane

FAST = LeaseTiming(lease_seconds=3, renew_deadline_seconds=2, retry_seconds=0.5)


def electors(api: kubernetes.client.ApiClient, namespace: str, *names: str) -> list[LeaseElector]:
    lease = unique_name("lease")
    return [LeaseElector(api, namespace, lease, name, FAST) for name in names]


def holder(elector: LeaseElector) -> str | None:
    return elector.coordination.read_namespaced_lease(elector.name, elector.namespace).spec.holder_identity


def test_one_holder_then_takeover_after_the_lease_expires(
    kube_api: kubernetes.client.ApiClient, namespace: str
) -> None:
    a, b = electors(kube_api, namespace, "a", "b")
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert a.try_acquire_or_renew()  # renewing is not taking over
    time.sleep(1)
    assert not b.try_acquire_or_renew()  # a renewed a second ago
    # a stops renewing (a dead pod): b takes over once the record has not changed for the lease duration,
    # measured from when b last saw it change, not from timestamps written by another clock.
    deadline = time.monotonic() + 10
    while not b.try_acquire_or_renew():
        assert time.monotonic() < deadline, "b never took over"
        time.sleep(0.5)
    lease = b.coordination.read_namespaced_lease(b.name, namespace)
    assert lease.spec.holder_identity == "b" and lease.spec.lease_transitions == 1
    assert not a.try_acquire_or_renew()  # the old leader, back from a pause, does not get it back


def test_release_hands_over_at_once(kube_api: kubernetes.client.ApiClient, namespace: str) -> None:
    a, b = electors(kube_api, namespace, "a", "b")
    assert a.try_acquire_or_renew()
    a.release()
    assert holder(a) is None
    assert b.try_acquire_or_renew()
    assert holder(b) == "b"


def test_racing_candidates_never_both_win(kube_api: kubernetes.client.ApiClient, namespace: str) -> None:
    candidates = electors(kube_api, namespace, *[f"c{i}" for i in range(6)])
    start = threading.Barrier(len(candidates))
    wins: list[str] = []

    def race(elector: LeaseElector) -> None:
        start.wait()
        if elector.try_acquire_or_renew():
            wins.append(elector.identity)

    threads = [threading.Thread(target=race, args=(c,)) for c in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1 and holder(candidates[0]) == wins[0]


def test_a_leader_that_cannot_renew_gives_up(kube_api: kubernetes.client.ApiClient, namespace: str) -> None:
    a, b = electors(kube_api, namespace, "a", "b")
    # b holds a Lease that outlives the test (nobody renews it), so a's renewals fail from the start and a
    # stalled a cannot find it expired and take it over.
    b.timing = LeaseTiming(lease_seconds=600, renew_deadline_seconds=2, retry_seconds=0.5)
    assert b.try_acquire_or_renew()
    lost = threading.Event()
    stop = threading.Event()
    started = time.monotonic()
    a.keep_renewing(stop, on_lost=lost.set)
    try:
        assert lost.wait(FAST.renew_deadline_seconds + 3 * FAST.retry_seconds + 2)
        assert time.monotonic() - started >= FAST.renew_deadline_seconds
    finally:
        stop.set()


def test_a_leader_cut_off_from_the_api_server_gives_up() -> None:
    """Connection errors are no ApiException: they must count as failed renewals, not end the renewer."""
    config = kubernetes.client.Configuration(host="https://127.0.0.1:9")  # nothing listens there
    config.retries = False
    with kubernetes.client.ApiClient(config) as unreachable:
        elector = LeaseElector(unreachable, "ns", "lease", "a", FAST)
        lost, stop = threading.Event(), threading.Event()
        elector.keep_renewing(stop, on_lost=lost.set)
        try:
            assert lost.wait(FAST.renew_deadline_seconds + 3 * FAST.retry_seconds + 2)
        finally:
            stop.set()
