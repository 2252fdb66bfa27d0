"""The user's path on one machine, as subprocesses: edgetune train -> edgetune export -> edgetune predict,
on the quickstart's model and data, with a real S3 server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.export, pytest.mark.slow]


def edgetune(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGETUNE_METRICS_PORT": "0"}
    return subprocess.run(
        [sys.executable, "-m", "edgetune_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_train_export_predict(s3_server, bucket, tmp_path: Path) -> None:
    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    job["spec"]["model"]["source"] = str(ROOT / "examples" / "quickstart" / "tiny-bert")
    job["spec"]["dataset"]["source"] = str(ROOT / "examples" / "quickstart" / "reviews.jsonl")
    job["spec"]["storage"] = {"uri": f"s3://{bucket}/jobs", "endpoint": s3_server.endpoint}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))

    trained = edgetune("train", str(job_file))
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert summary["steps"] == summary["totalSteps"] > 0
    assert summary["evalAccuracy"] >= 0.8
    assert summary["model"] == f"s3://{bucket}/jobs/local/quickstart/model"

    exported = edgetune("export", str(job_file), "--target", "cpu-int8")
    assert exported.returncode == 0, exported.stderr[-3000:]
    status = json.loads(exported.stdout.strip().splitlines()[-1])
    assert status["phase"] == "Succeeded", status
    assert status["uri"] == f"s3://{bucket}/jobs/local/quickstart/exports/cpu-int8"
    assert status["sizeBytes"] < 10e6 and status["accuracyDrop"] <= 2.0

    predicted = edgetune(
        "predict", status["uri"], "a great and wonderful film, loved it", "--endpoint", s3_server.endpoint
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert "positive" in predicted.stdout


def test_train_refuses_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: edgetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\nspec: {model: {}}\n")
    result = edgetune("train", str(bad))
    assert result.returncode == 2
    assert "spec.model.source: is required" in result.stderr
    assert "Traceback" not in result.stderr
