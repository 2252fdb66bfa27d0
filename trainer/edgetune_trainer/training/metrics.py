"""Prometheus metrics of a training run, served by rank 0 on the pod port named `metrics`.

Names follow the design (prefix `edgetune_`); every series carries `namespace` and `job` labels so
the shipped dashboard can select one job.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

PORT_ENV = "EDGETUNE_METRICS_PORT"
DEFAULT_PORT = 8090  # Ray itself exports its metrics on 8080 in KubeRay's pods
LABELS = ("namespace", "job")


class TrainMetrics:
    """The trainer's gauges and histograms, in a registry of their own (no process-global state)."""

    def __init__(self, namespace: str, job: str) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"namespace": namespace, "job": job}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=self.registry)

        self.loss = gauge("edgetune_train_loss", "Mean training loss over the last reporting interval")
        self.samples_per_second = gauge("edgetune_train_samples_per_second", "Training throughput, all workers")
        self.step = gauge("edgetune_train_step", "Optimizer steps done")
        self.epoch = gauge("edgetune_train_epoch", "Current epoch (0-based)")
        self.eval_metric = gauge("edgetune_eval_metric", "Eval accuracy (0-1) after the latest epoch")
        self.checkpoint_bytes = gauge("edgetune_checkpoint_bytes", "Size of the latest checkpoint")
        self.checkpoint_seconds = Histogram(
            "edgetune_checkpoint_seconds",
            "Time to write and upload one checkpoint",
            LABELS,
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )

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
