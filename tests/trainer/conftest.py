"""A local Ray cluster shared by the trainer tests (2 CPUs: two DDP workers on gloo)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from s3server import S3Server, free_port


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server) -> Iterator[None]:
    """Started after the S3 server: local Ray workers inherit the environment present at ray.init,
    and that must already hold the S3 credentials."""
    import ray

    # Workers inherit the environment of the cluster: rank 0 serves metrics on this port.
    os.environ["EDGETUNE_METRICS_PORT"] = str(free_port())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
