"""Prometheus metrics of a training run, served by rank 0 on the pod port named `train-metrics`.

The definitions (names, labels, buckets) are edgetune_trainer.metric_catalog's; every series carries
`namespace` and `job` labels so the shipped dashboard can select one job.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, start_http_server

from edgetune_trainer import metric_catalog as catalog
from edgetune_trainer.metric_instruments import gauge, histogram

log = logging.getLogger(__name__)

PORT_ENV = "EDGETUNE_METRICS_PORT"
DEFAULT_PORT = 8090  # Ray itself exports its metrics on 8080 in KubeRay's pods


class TrainMetrics:
    """The trainer's gauges and histograms, in a registry of their own (no process-global state)."""

    def __init__(self, namespace: str, job: str) -> None:
        self.registry = CollectorRegistry()
        self.labels = {catalog.NAMESPACE: namespace, catalog.JOB: job}
        self.loss = gauge(catalog.TRAIN_LOSS, self.registry)
        self.samples_per_second = gauge(catalog.TRAIN_SAMPLES_PER_SECOND, self.registry)
        self.step = gauge(catalog.TRAIN_STEP, self.registry)
        self.epoch = gauge(catalog.TRAIN_EPOCH, self.registry)
        self.eval_metric = gauge(catalog.EVAL_METRIC, self.registry)
        self.checkpoint_bytes = gauge(catalog.CHECKPOINT_BYTES, self.registry)
        self.checkpoint_seconds = histogram(catalog.CHECKPOINT_SECONDS, self.registry)
        # At 0 from the start, so that the first checkpoint counts as an increase in rate() and quantiles.
        self.checkpoint_seconds.labels(**self.labels)

    def serve(self, port: int | None = None) -> int | None:
        """Start the HTTP endpoint (port from EDGETUNE_METRICS_PORT, default 8090; 0 turns it off)."""
        port = int(os.environ.get(PORT_ENV, DEFAULT_PORT)) if port is None else port
        if port == 0:
            return None
        try:
            server, _ = start_http_server(port, registry=self.registry)
        except OSError as err:  # a busy port must not stop training
            log.warning("metrics endpoint not started on port %d: %s", port, err)
            return None
        return int(server.server_port)

    def record_progress(self, step: int, epoch: int, loss: float, samples_per_second: float) -> None:
        self.step.labels(**self.labels).set(step)
        self.epoch.labels(**self.labels).set(epoch)
        self.loss.labels(**self.labels).set(loss)
        self.samples_per_second.labels(**self.labels).set(samples_per_second)

    def record_eval(self, metric: float) -> None:
        self.eval_metric.labels(**self.labels).set(metric)

    def record_checkpoint(self, seconds: float, size: int) -> None:
        self.checkpoint_seconds.labels(**self.labels).observe(seconds)
        self.checkpoint_bytes.labels(**self.labels).set(size)
