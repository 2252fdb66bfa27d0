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


def test_train_distill_export_a_student(s3_server, bucket, tmp_path: Path) -> None:
    """edgetune train, then train --distill TARGET, then export TARGET: the cluster's three steps by hand."""
    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    job["spec"]["model"]["source"] = str(ROOT / "examples" / "quickstart" / "tiny-bert")
    job["spec"]["dataset"]["source"] = str(ROOT / "examples" / "quickstart" / "reviews.jsonl")
    job["spec"]["storage"] = {"uri": f"s3://{bucket}/students", "endpoint": s3_server.endpoint}
    job["spec"]["training"]["epochs"] = 1
    job["spec"]["export"] = [{"name": "tiny", "quantize": "int8", "distill": {"student": {"layers": 1}, "epochs": 1}}]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))

    early = edgetune("train", str(job_file), "--distill", "tiny")  # no teacher yet
    assert early.returncode == 1 and "the job's training must finish before its distillation" in early.stderr
    assert edgetune("train", str(job_file)).returncode == 0
    unknown = edgetune("train", str(job_file), "--distill", "nosuch")
    assert unknown.returncode == 1 and "no export target 'nosuch' with a distill section" in unknown.stderr
    not_yet = edgetune("export", str(job_file), "--target", "tiny")
    assert not_yet.returncode == 1 and "no distilled student at" in not_yet.stdout + not_yet.stderr

    distilled = edgetune("train", str(job_file), "--distill", "tiny")
    assert distilled.returncode == 0, distilled.stderr[-3000:]
    student = json.loads(distilled.stdout.strip().splitlines()[-1])["distilled"]["tiny"]
    assert student["model"] == f"s3://{bucket}/students/local/quickstart/students/tiny/model"
    assert student["steps"] == student["totalSteps"] > 0

    exported = edgetune("export", str(job_file), "--target", "tiny")
    assert exported.returncode == 0, exported.stderr[-3000:]
    status = json.loads(exported.stdout.strip().splitlines()[-1])
    assert status["phase"] == "Succeeded" and status["candidate"] in ("teacher-int8", "student", "student-int8")
    assert [c["name"] for c in status["candidates"]] == ["teacher-int8", "student", "student-int8"]


def test_train_refuses_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: edgetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\nspec: {model: {}}\n")
    result = edgetune("train", str(bad))
    assert result.returncode == 2
    assert "spec.model.source: is required" in result.stderr
    assert "Traceback" not in result.stderr
