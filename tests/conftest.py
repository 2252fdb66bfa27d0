"""Fixtures shared by every tier: a real S3 server over HTTP, and tiny real models and data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from s3server import CREDENTIALS, S3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto in server mode on a loopback port; AWS_* credentials exported for every process we start."""
    with pytest.MonkeyPatch.context() as environment:  # restores the variables afterwards
        for key, value in CREDENTIALS.items():
            environment.setenv(key, value)
        server = S3Server(tmp_path_factory.mktemp("s3")).start()
        yield server
        server.stop()


@pytest.fixture
def bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    name = f"t-{abs(hash(request.node.nodeid)) % 10**10:010d}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetune_trainer.synthetic import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetune_trainer.synthetic import write_reviews

    return write_reviews(tmp_path_factory.mktemp("data") / "reviews.jsonl", 800, seed=3)
