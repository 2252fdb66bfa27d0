"""Publishing exports to object storage (a real S3 server over HTTP), `edgetune predict` on what was
published, integrity checks, and the `edgetune-export` command line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from export_support import FAST, Trained, run_export

from edgetune_trainer.config import TrainJobConfig, load_train_config
from edgetune_trainer.export import cli as export_cli
from edgetune_trainer.export import predict
from edgetune_trainer.export.predict import ExportedClassifier, ExportIntegrityError, fetch_export, verify_export
from edgetune_trainer.export.report import ExportOptions
from edgetune_trainer.export.target import run_target
from edgetune_trainer.storage.job import JobStorage

pytestmark = pytest.mark.export
REPO = Path(__file__).resolve().parents[2]
LABELS = ["negative", "positive"]


def job_config(storage: dict[str, Any], model: str, data: Path, *exports: dict[str, Any]) -> TrainJobConfig:
    return load_train_config(
        {
            "name": "export-job",
            "model": {
                "source": model,
                "task": "text-classification",
                "numLabels": 2,
                "labels": ["negative", "positive"],
            },
            "dataset": {"source": str(data), "validationFraction": 0.25, "maxLength": 32},
            "storage": storage,
            "export": list(exports),
        }
    )


def put_artifact(storage: JobStorage, artifact: Path) -> None:
    """Place a model artifact at the job's `model` key, as the trainer does at the end of a run."""
    if storage.bucket is None:  # JobStorage writes no parent folders on a local filesystem
        shutil.copytree(artifact, storage.path("model"))
    else:
        storage.upload_dir(artifact, "model")


# --- predict ------------------------------------------------------------------------------------


def test_predict_runs_a_copied_export_in_a_fresh_process(text_model: Trained, tmp_path: Path) -> None:
    report, _ = run_export(text_model, tmp_path / "built", quantize="int8")
    assert report.phase == "Succeeded", report.message
    # Only the export folder travels: no artifact, no training code state, a new interpreter.
    shipped = shutil.copytree(tmp_path / "built", tmp_path / "device" / "export")
    env = {**os.environ, "PYTHONPATH": str(REPO / "trainer")}

    def run(text: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "edgetune_trainer.export.predict", str(shipped), text],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        return done.stdout.splitlines()

    lines = run("a wonderful superb film, loved it")
    assert lines[0] == "positive"
    name, value = lines[1].split()
    assert name == "positive" and float(value) > 0.5
    assert run("awful boring plot and terrible actors")[0] == "negative"


def test_predict_classifies_an_image_file(image_model: Trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_export(image_model, tmp_path / "out", quantize="int8")
    image, label = image_model.examples[-1]
    image.save(tmp_path / "input.png")

    assert predict.main([str(tmp_path / "out" / "manifest.json"), str(tmp_path / "input.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["label"] == image_model.labels[label]
    assert abs(sum(result["probabilities"].values()) - 1.0) < 1e-5


def test_corrupt_export_is_detected_by_its_sha256(
    text_model: Trained, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_export(text_model, tmp_path / "out", quantize="int8")
    model = tmp_path / "out" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit deep inside the weights
    model.write_bytes(bytes(data))

    with pytest.raises(ExportIntegrityError, match=r"model.onnx has sha256 .* the manifest says"):
        verify_export(tmp_path / "out")
    assert predict.main([str(tmp_path / "out"), "good"]) == 2
    assert "corrupt" in capsys.readouterr().err

    model.write_bytes(bytes(data[: len(data) // 2]))  # an upload cut short
    with pytest.raises(ExportIntegrityError, match=r"model.onnx has sha256 .* the manifest says"):
        verify_export(tmp_path / "out")
    assert predict.main([str(tmp_path / "out"), "good"]) == 2
    print(f"\nFIGURE: export artifact ({len(data)} bytes): 1 flipped bit and a cut to half both refused by sha256")


def test_missing_file_and_failed_export_are_refused(text_model: Trained, tmp_path: Path) -> None:
    run_export(text_model, tmp_path / "ok")
    shutil.rmtree(tmp_path / "ok" / "tokenizer")
    with pytest.raises(ExportIntegrityError, match=r"incomplete: tokenizer/.* is missing"):
        ExportedClassifier.load(tmp_path / "ok")

    run_export(text_model, tmp_path / "failed", budgets={"maxSizeMB": 0.01})
    with pytest.raises(ExportIntegrityError, match=r"failed and has no model: maxSizeMB missed"):
        ExportedClassifier.load(tmp_path / "failed")


# --- publishing ---------------------------------------------------------------------------------


class ManifestWatcher(threading.Thread):
    """A reader polling the export folder as fast as it can while it is published, as `fetch_export` does
    (manifest first, then the files it lists) but with no retries, so it sees every intermediate state.

    The invariant: whenever a manifest stays visible while the reader fetches the files it lists, those
    files are all there with their sha256. (A manifest that vanishes or changes meanwhile means a newer
    export is being published: a reader starts over, as predict's sha256 checks make it.)
    """

    def __init__(self, storage: JobStorage, key: str) -> None:
        super().__init__(daemon=True)
        self.storage, self.key = storage, key
        self.stop = threading.Event()
        self.complete_reads: list[str] = []  # sha256 of each manifest read together with all its files
        self.restarts = 0
        self.problems: list[str] = []

    def read(self, name: str) -> bytes | None:
        try:
            # storage.raw: the plain S3 filesystem (storage.filesystem retries, which would hide the states)
            with self.storage.raw.open_input_stream(self.storage.path(f"{self.key}/{name}")) as stream:
                return stream.read()
        except OSError:  # absent (FileNotFoundError) or deleted while being read
            return None

    def run(self) -> None:
        while not self.stop.is_set():
            manifest = self.read("manifest.json")
            if manifest is None:
                continue
            files = json.loads(manifest)["files"]
            contents = {name: self.read(name) for name in files}
            if self.read("manifest.json") != manifest:
                self.restarts += 1
                continue
            for name, entry in files.items():
                content = contents[name]
                if content is None or hashlib.sha256(content).hexdigest() != entry["sha256"]:
                    self.problems.append(
                        f"the manifest lists {name} but it is {'missing' if content is None else 'different'}"
                    )
            self.complete_reads.append(hashlib.sha256(manifest).hexdigest())


def test_export_is_published_to_s3_with_the_manifest_last(
    text_model: Trained, s3_server: Any, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = job_config(
        {"uri": f"s3://{bucket}/jobs", "endpoint": s3_server.endpoint},
        str(text_model.artifact),
        tmp_path / "unused.jsonl",
        {"name": "edge-int8", "quantize": "int8", "budgets": {"maxAccuracyDrop": 2.0}},
    )
    storage = JobStorage(config.storage, config.namespace, config.name)
    storage.upload_dir(text_model.artifact, "model")  # what the trainer leaves at the end of a run
    key = "exports/edge-int8"
    # A complete export from an earlier run: the watcher reads it at first, and its manifest must never
    # be read together with the new files, nor the new manifest with the old files.
    old = b"an older model"
    storage.write_bytes(f"{key}/model.onnx", old)
    old_manifest = {"files": {"model.onnx": {"sha256": hashlib.sha256(old).hexdigest()}}}
    storage.write_bytes(f"{key}/manifest.json", json.dumps(old_manifest).encode())

    watcher = ManifestWatcher(storage, key)
    watcher.start()
    report = run_target(config, config.export[0], text_model.examples, tmp_path / "work", options=FAST)
    new_manifest = hashlib.sha256(storage.read_bytes(f"{key}/manifest.json")).hexdigest()
    deadline = time.monotonic() + 10  # let the watcher finish one complete read of the published export
    while not (watcher.complete_reads and watcher.complete_reads[-1] == new_manifest) and time.monotonic() < deadline:
        time.sleep(0.1)
    watcher.stop.set()
    watcher.join(30)

    assert report.phase == "Succeeded", report.message
    assert report.uri == f"s3://{bucket}/jobs/local/export-job/exports/edge-int8"
    assert watcher.problems == []
    # The server's own request log gives the order: the old manifest deleted before any new file, the
    # new manifest written after all of them.
    prefix = f"/{bucket}/jobs/local/export-job/{key}/"

    def requests_served() -> list[tuple[str, str]]:
        return [(method, path.split("?")[0]) for method, path in s3_server.requests() if path.startswith(prefix)]

    deadline = time.monotonic() + 10  # the server logs a request after answering it: wait for the last one
    while requests_served().count(("PUT", prefix + "manifest.json")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    served = requests_served()
    publish = served[served.index(("PUT", prefix + "manifest.json")) + 1 :]  # after the old export was set up
    changes = [(method, path.removeprefix(prefix)) for method, path in publish if method in ("PUT", "DELETE")]
    assert changes[0] == ("DELETE", "manifest.json") and changes[-1] == ("PUT", "manifest.json"), changes
    assert ("PUT", "model.onnx") in changes
    assert watcher.complete_reads[0] != new_manifest and watcher.complete_reads[-1] == new_manifest  # ... the new last
    names = {info.split("/exports/edge-int8/", 1)[1] for info in _keys(storage, key)}
    assert {"model.onnx", "manifest.json", "tokenizer/tokenizer_config.json"} <= names
    manifest = json.loads(storage.read_bytes(f"{key}/manifest.json"))
    assert manifest["source"]["uri"] == f"s3://{bucket}/jobs/local/export-job/model"
    assert manifest["uri"] == report.uri

    # A device with only the URI: fetch, verify, classify.
    fetched = fetch_export(report.uri, tmp_path / "device", endpoint=s3_server.endpoint)
    assert ExportedClassifier.load(fetched).predict("excellent fun brilliant movie")[0] == "positive"
    capsys.readouterr()
    assert predict.main([report.uri, "terrible boring dull film", "--endpoint", s3_server.endpoint]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "negative"


def test_republishing_replaces_the_old_export_and_failures_publish_only_a_manifest(
    text_model: Trained, s3_server: Any, bucket: str, tmp_path: Path
) -> None:
    config = job_config(
        {"uri": f"s3://{bucket}/jobs", "endpoint": s3_server.endpoint},
        str(text_model.artifact),
        tmp_path / "unused.jsonl",
        {"name": "edge", "format": "onnx"},
        {"name": "tight", "budgets": {"maxSizeMB": 0.01}},
    )
    storage = JobStorage(config.storage, config.namespace, config.name)
    storage.upload_dir(text_model.artifact, "model")
    storage.write_bytes("exports/edge/leftover.bin", b"from an earlier export")

    ok = run_target(config, config.export[0], text_model.examples, tmp_path / "a", options=FAST)
    failed = run_target(config, config.export[1], text_model.examples, tmp_path / "b", options=FAST)

    assert ok.phase == "Succeeded" and failed.phase == "Failed"
    assert not storage.exists("exports/edge/leftover.bin")
    assert [name.rsplit("/", 1)[1] for name in _keys(storage, "exports/tight")] == ["manifest.json"]
    manifest = json.loads(storage.read_bytes("exports/tight/manifest.json"))
    assert manifest["phase"] == "Failed" and manifest["message"].startswith("maxSizeMB missed")
    assert failed.to_status()["message"] == manifest["message"]
    assert failed.to_status()["missedBudgets"] == ["maxSizeMB"] and "missedBudgets" not in ok.to_status()


def test_a_corrupt_artifact_in_storage_fails_the_export_with_a_manifest(text_model: Trained, tmp_path: Path) -> None:
    config = job_config(
        {"uri": f"file://{tmp_path}/store"}, str(text_model.artifact), tmp_path / "unused.jsonl", {"name": "edge"}
    )
    storage = JobStorage(config.storage, config.namespace, config.name)
    put_artifact(storage, text_model.artifact)
    storage.write_bytes("model/model.safetensors", b"truncated")

    report = run_target(config, config.export[0], text_model.examples, tmp_path / "work", options=FAST)

    assert report.phase == "Failed"
    assert report.message.startswith("ArtifactError: artifact") and "model.safetensors has sha256" in report.message
    assert json.loads(storage.read_bytes("exports/edge/manifest.json"))["phase"] == "Failed"


def _keys(storage: JobStorage, key: str) -> list[str]:
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(storage.path(key), recursive=True, allow_not_found=True)
    return sorted(info.path for info in storage.filesystem.get_file_info(selector) if info.type == pafs.FileType.File)


# --- the command line ---------------------------------------------------------------------------


def test_edgetune_export_command_line(text_model: Trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from edgetune_trainer.synthetic import write_reviews

    write_reviews(tmp_path / "reviews.jsonl", 400, seed=7)
    document = {
        "name": "cli-job",
        "model": {"source": str(text_model.artifact), "task": "text-classification", "numLabels": 2},
        "dataset": {"source": "reviews.jsonl", "validationFraction": 0.25, "maxLength": 32},
        "storage": {"uri": f"file://{tmp_path}/store"},
        "export": [{"name": "edge-int8", "quantize": "int8", "budgets": {"maxAccuracyDrop": 2.0, "maxSizeMB": 5}}],
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(document))
    storage = JobStorage(load_train_config(document).storage, "local", "cli-job")
    put_artifact(storage, text_model.artifact)

    argv = ["--job-config", str(tmp_path / "job.yaml"), "--target", "edge-int8", "--latency-runs", "10"]
    code = export_cli.main([*argv, "--eval-limit", "50", "--report-file", str(tmp_path / "report.json")])

    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, status
    assert status["phase"] == "Succeeded" and status["uri"].endswith("/local/cli-job/exports/edge-int8")
    assert set(status) == {"name", "phase", "message", "uri", "sizeBytes", "latencyMs", "accuracyDrop"}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["accuracy"]["samples"] == 50 and report["method"] == "dynamic"
    assert storage.exists("exports/edge-int8/manifest.json")

    assert export_cli.main(["--job-config", str(tmp_path / "job.yaml"), "--target", "nope"]) == 2
    assert "no export target 'nope' (targets: edge-int8)" in capsys.readouterr().err


def test_edgetune_export_publishes_a_data_error_as_a_failed_export(
    text_model: Trained, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    document = {
        "name": "no-data",
        "model": {"source": str(text_model.artifact), "task": "text-classification", "numLabels": 2},
        "dataset": {"source": "missing.jsonl", "maxLength": 32},
        "storage": {"uri": f"file://{tmp_path}/store"},
        "export": [{"name": "edge"}],
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(document))
    storage = JobStorage(load_train_config(document).storage, "local", "no-data")
    put_artifact(storage, text_model.artifact)

    assert export_cli.main(["--job-config", str(tmp_path / "job.yaml"), "--target", "edge"]) == 1

    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["phase"] == "Failed"
    assert status["message"].startswith("ExportError: cannot load the eval examples: ")
    assert "missing.jsonl" in status["message"]
    assert json.loads(storage.read_bytes("exports/edge/manifest.json"))["message"] == status["message"]


def test_options_record_the_pinned_thread_count(text_model: Trained, tmp_path: Path) -> None:
    options = ExportOptions(latency_runs=5, warmup_runs=1, threads=2)
    report, manifest = run_export(text_model, tmp_path / "out", options=options)
    assert report.latency_ms is not None and report.latency_ms.threads == 2
    assert manifest["latencyMs"]["threads"] == 2 and "(2 threads)" in report.message
