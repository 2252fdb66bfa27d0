"""prometheus_client instruments made from the catalog's definitions (edgetune_trainer.metric_catalog)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgetune_trainer.metric_catalog import Metric


def gauge(metric: Metric, registry: CollectorRegistry) -> Gauge:
    assert metric.kind == "gauge", metric.name
    return Gauge(metric.name, metric.help, metric.labels, registry=registry)


def counter(metric: Metric, registry: CollectorRegistry) -> Counter:
    assert metric.kind == "counter", metric.name
    return Counter(metric.name, metric.help, metric.labels, registry=registry)


def histogram(metric: Metric, registry: CollectorRegistry) -> Histogram:
    assert metric.kind == "histogram", metric.name
    return Histogram(metric.name, metric.help, metric.labels, registry=registry, buckets=metric.buckets)
