"""The operator's Prometheus metrics (names from the design, prefix `edgetune_`), served on /metrics."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class PhaseBook(Collector):
    """`edgetune_jobs{namespace,phase}`: the last phase the operator saw of every job it watches."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase

    def counts(self) -> Tally[tuple[str, str]]:
        with self._lock:
            return Tally((namespace, phase) for (namespace, _), phase in self._phases.items())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "edgetune_jobs", "FineTuneJobs by namespace and phase", labels=["namespace", "phase"]
        )
        for (namespace, phase), count in sorted(self.counts().items()):
            family.add_metric([namespace, phase], count)
        yield family


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = PhaseBook()
        self.registry.register(self.jobs)
        self.reconcile_seconds = Histogram(
            "edgetune_reconcile_seconds",
            "Time to reconcile one FineTuneJob",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.launch_seconds = Histogram(
            "edgetune_launch_seconds",
            "From FineTuneJob creation to its first RayJob created",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.attempts = Counter("edgetune_attempts", "RayJob attempts started", registry=self.registry)
        self.exports = Counter(
            "edgetune_exports", "Export targets finished, by result", ["result"], registry=self.registry
        )

    def serve(self, port: int) -> int:
        server, _ = start_http_server(port, registry=self.registry)
        return int(server.server_port)
