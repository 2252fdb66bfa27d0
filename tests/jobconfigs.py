"""Trainer configs used by several test tiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s3server import S3Server


def job_config(name: str, bucket: str, s3: S3Server, model_dir: Path, data: Path, **sections: Any) -> dict[str, Any]:
    """A trainer config for the tiny BERT on generated reviews: 2 workers, 3 epochs of 20 steps."""
    config: dict[str, Any] = {
        "name": name,
        "model": {"source": str(model_dir), "task": "text-classification", "numLabels": 2, "labels": ["neg", "pos"]},
        "dataset": {"source": str(data), "validationFraction": 0.2, "maxLength": 32},
        "training": {"epochs": 3, "batchSizePerWorker": 16, "learningRate": 0.001, "seed": 5},
        "scaling": {"workers": 2},
        "storage": {"uri": f"s3://{bucket}/jobs", "endpoint": s3.endpoint},
        "checkpoint": {"everySteps": 10, "keep": 2},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config
