"""`edgetune run` as a user runs it: a subprocess on a job file, with no cluster and no S3 server of the
test's own. The real quickstart end to end and again (already finished); Ctrl-C mid-training and the
resume; a plain folder with --storage and --fresh; and the errors a user meets first."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from s3server import free_port

from edgetune_trainer.training.startup import PHASES as STARTUP_PHASES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgetune_operator.cli", "run", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "EDGETUNE_METRICS_PORT": "0"}  # other tiers may have set a port in use


def edgetune_run(*args: str, cwd: Path, timeout: int = 420) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment(), check=False
    )
    return done, time.monotonic() - started


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """--json prints the summary and nothing else on stdout."""
    return json.loads(done.stdout)


def small_job(folder: Path, name: str, **changes: Any) -> Path:
    """The quickstart with fewer steps, its model and data read from examples/ (so its storage lands in
    `folder`, next to the job file)."""
    job = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    job["metadata"]["name"] = name
    job["spec"]["model"]["source"] = str(EXAMPLES / "quickstart" / "tiny-bert")
    job["spec"]["dataset"]["source"] = str(EXAMPLES / "quickstart" / "reviews.jsonl")
    # Few steps teach the model little, and int8 may then flip near-tied labels: no accuracy budget here.
    job["spec"]["export"][0]["budgets"].pop("maxAccuracyDrop")
    for section, values in changes.items():
        job["spec"][section] = {**job["spec"].get(section, {}), **values}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def interrupt_at(job: Path, cwd: Path, prefix: str) -> tuple[subprocess.Popen[str], str, str, list[str]]:
    """`edgetune run JOB --json`, Ctrl-C'd at the first stderr line starting with `prefix`: the process, its
    stdout and stderr after the interrupt, and the stderr lines up to it."""
    process = subprocess.Popen(
        command(str(job), "--json"),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        start_new_session=True,  # its own process group, as a terminal's foreground job is
    )
    seen = []
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if line.startswith(prefix):
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
            break
    stdout, stderr = process.communicate(timeout=120)
    return process, stdout, stderr, seen


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def intact_checkpoints(folder: Path) -> list[str]:
    """Checkpoint folders whose state.pt matches the sha256 of their manifest, newest first."""
    names = []
    for checkpoint in sorted(folder.glob("checkpoint_*"), reverse=True):
        manifest = checkpoint / "manifest.json"
        if manifest.is_file() and sha256(checkpoint / "state.pt") == json.loads(manifest.read_text())["sha256"]:
            names.append(checkpoint.name)
    return names


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] >= 400 and image.size[1] >= 300


def test_quickstart_end_to_end_then_already_finished(tmp_path: Path) -> None:
    """examples/quickstart.yaml unchanged, copied with its folder so the embedded server's data lands in
    tmp_path/.edgetune/storage: 2 DDP workers, checkpoints, an int8 ONNX export within its budgets."""
    shutil.copy(EXAMPLES / "quickstart.yaml", tmp_path)
    shutil.copytree(EXAMPLES / "quickstart", tmp_path / "quickstart")

    done, _ = edgetune_run("quickstart.yaml", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_of(done)
    assert summary["phase"] == "Succeeded"
    assert summary["steps"] == summary["totalSteps"] == 75  # 800 train rows / 2 workers / 16 = 25 steps x 3 epochs
    assert summary["alreadyFinished"] is False and summary["resumedFrom"] is None
    assert summary["evalAccuracy"] >= 0.85 and summary["finalLoss"] < 0.5
    assert summary["checkpointsWritten"] == 7  # every 10 steps
    assert summary["model"] == "s3://edgetune/local/quickstart/model"
    assert "checkpoint at step 10: s3://edgetune/local/quickstart/checkpoints/checkpoint_000000010-" in done.stderr
    (export,) = summary["exports"]
    assert export["name"] == "cpu-int8" and export["phase"] == "Succeeded" and export["budgetsMet"]
    assert export["uri"] == "s3://edgetune/local/quickstart/exports/cpu-int8"
    assert export["sizeBytes"] < 10e6 and export["latencyMs"] < 20 and export["accuracyDrop"] <= 2.0
    assert {check["budget"] for check in export["budgets"]} == {"maxSizeMB", "maxLatencyMs", "maxAccuracyDrop"}

    storage = summary["storage"]
    assert storage["kind"] == "embedded-s3" and storage["endpoint"].startswith("http://127.0.0.1:")
    assert "moto" in storage["description"]
    job_dir = tmp_path / ".edgetune" / "storage" / "edgetune" / "local" / "quickstart"
    assert Path(storage["jobDir"]) == job_dir
    checkpoints = intact_checkpoints(job_dir / "checkpoints")
    assert [name.split("-")[0] for name in checkpoints] == ["checkpoint_000000070", "checkpoint_000000060"]  # keep 2
    assert json.loads((job_dir / "model" / "edgetune-model.json").read_text())["steps"] == 75
    manifest = json.loads((job_dir / "exports" / "cpu-int8" / "manifest.json").read_text())
    assert manifest["phase"] == "Succeeded"
    assert sha256(job_dir / "exports" / "cpu-int8" / "model.onnx") == manifest["files"]["model.onnx"]["sha256"]
    assert Path(summary["curves"]) == job_dir / "curves.png"
    assert_png(job_dir / "curves.png")
    # Where the time to the first step went: every phase, the driver's and rank 0's clocks lined up.
    startup = summary["startupSeconds"]
    assert list(startup) == [label for _, label in STARTUP_PHASES], startup
    assert all(seconds >= 0 for seconds in startup.values()) and 0 < sum(startup.values()) < summary["wallSeconds"]
    assert "start-up: Ray start " in done.stderr

    again, seconds = edgetune_run("quickstart.yaml", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    second = summary_of(again)
    assert second["alreadyFinished"] is True and second["checkpointsWritten"] == 0
    assert "already finished" in again.stderr
    assert second["steps"] == 75 and second["evalAccuracy"] == summary["evalAccuracy"]
    assert second["finalLoss"] == summary["finalLoss"]  # from the history kept in storage
    assert second["exports"][0]["reused"] is True and second["exports"][0]["budgetsMet"]
    assert second["startupSeconds"] == {}  # nothing was started
    assert intact_checkpoints(job_dir / "checkpoints") == checkpoints
    assert seconds < 45, f"the second run took {seconds:.0f} s"  # no Ray, no training, no export


def test_ctrl_c_keeps_the_last_checkpoint_and_the_next_run_resumes(tmp_path: Path) -> None:
    job = small_job(tmp_path, "interrupted", training={"epochs": 2})
    process, stdout, stderr, seen = interrupt_at(job, tmp_path, "checkpoint at step")
    assert process.returncode == 130, "".join(seen) + stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["phase"] == "Interrupted"
    assert "run the same command again to resume" in summary["message"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # Ray's processes and the server went with it
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("processes of the interrupted run are still alive")

    checkpoints = tmp_path / ".edgetune" / "storage" / "edgetune" / "local" / "interrupted" / "checkpoints"
    intact = intact_checkpoints(checkpoints)
    assert intact, f"no intact checkpoint on disk after the interrupt: {sorted(checkpoints.iterdir())}"
    assert intact[0] in summary["message"]

    done, _ = edgetune_run(str(job), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = summary_of(done)
    assert resumed["phase"] == "Succeeded" and resumed["steps"] == resumed["totalSteps"] == 50
    assert resumed["resumedFrom"] == f"s3://edgetune/local/interrupted/checkpoints/{intact[0]}"
    assert f"resumed from {resumed['resumedFrom']}" in done.stderr
    assert_png(Path(resumed["curves"]))


def test_storage_folder_and_fresh(tmp_path: Path) -> None:
    """--storage DIR: the job's files in a plain folder, no server; --fresh deletes the checkpoints and
    the model, trains from step 0 and rebuilds the exports."""
    job = small_job(tmp_path, "tiny", training={"maxSteps": 8}, checkpoint={"everySteps": 4})
    store = tmp_path / "store"
    done, _ = edgetune_run(str(job), "--json", "--storage", str(store), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first = summary_of(done)
    assert first["storage"]["kind"] == "folder" and first["storage"]["endpoint"] is None
    assert first["model"] == f"file://{store}/local/tiny/model"
    job_dir = store / "local" / "tiny"
    assert (job_dir / "model" / "edgetune-model.json").is_file()
    assert (job_dir / "exports" / "cpu-int8" / "manifest.json").is_file()
    assert_png(job_dir / "curves.png")
    assert not (tmp_path / ".edgetune" / "storage").exists()  # no embedded server was started
    before = intact_checkpoints(job_dir / "checkpoints")
    assert len(before) == 2

    done, _ = edgetune_run(str(job), "--json", "--storage", str(store), "--fresh", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = summary_of(done)
    assert fresh["alreadyFinished"] is False and fresh["resumedFrom"] is None
    assert fresh["steps"] == 8 and fresh["checkpointsWritten"] == 2
    assert fresh["exports"][0]["reused"] is False
    after = intact_checkpoints(job_dir / "checkpoints")
    assert len(after) == 2 and not set(before) & set(after)  # the old run's checkpoints were deleted


def test_an_invalid_file_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: edgetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: bad}\n"
        "spec:\n  model: {source: ./m, task: text-classification, numLabels: 1, freez: none}\n"
        "  dataset: {source: 's3://'}\n  training: {epochs: 0}\n"
    )
    done, _ = edgetune_run(str(bad), "--json", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    for expected in ("spec.model.numLabels", "spec.model.freez", "did you mean", "spec.dataset.source", "epochs"):
        assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_model_is_named(tmp_path: Path) -> None:
    job = small_job(tmp_path, "nomodel", model={"source": "./no-such-model"})
    done, _ = edgetune_run(str(job), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    summary = summary_of(done)
    assert summary["phase"] == "Failed"
    assert f"{tmp_path / 'no-such-model'} does not exist" in summary["message"]
    assert "Traceback" not in done.stderr


def test_an_unreachable_endpoint_fails_fast_naming_it(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    job = small_job(tmp_path, "unreachable", storage={"uri": "s3://edgetune-jobs/x", "endpoint": endpoint})
    done, seconds = edgetune_run(str(job), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    summary = summary_of(done)
    assert summary["phase"] == "Failed" and summary["storage"]["kind"] == "spec"
    assert f"reaching object storage at {endpoint} (bucket edgetune-jobs)" in summary["message"]
    assert seconds < 30
    assert "Traceback" not in done.stderr


def test_a_distill_target_trains_a_student_that_resumes_and_is_then_reused(tmp_path: Path) -> None:
    """The student's run is checkpointed and resumed like the job's; the export tries every candidate and
    publishes the smallest within budget; a third run trains and exports nothing."""
    job_file = small_job(tmp_path, "distilled", training={"epochs": 1}, checkpoint={"everySteps": 5})
    job = yaml.safe_load(job_file.read_text())
    distill = {
        "student": {"layers": 1, "embeddingRank": 16},
        "prune": {"heads": 0.5, "ffn": 0.5},
        "augment": {"probability": 0.3},
        "epochs": 2,
    }
    job["spec"]["export"] = [{"name": "tiny", "quantize": "int8", "distill": distill}]
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    process, stdout, stderr, seen = interrupt_at(job_file, tmp_path, "distill tiny: checkpoint at step")
    assert process.returncode == 130, "".join(seen) + stderr[-3000:]
    interrupted = json.loads(stdout)
    assert interrupted["phase"] == "Interrupted"
    assert "interrupted while distilling the student of tiny" in interrupted["message"]
    students = tmp_path / ".edgetune" / "storage" / "edgetune" / "local" / "distilled" / "students" / "tiny"
    intact = intact_checkpoints(students / "checkpoints")
    assert intact, f"no intact student checkpoint after the interrupt: {''.join(seen)[-2000:]}"

    done, _ = edgetune_run(str(job_file), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_of(done)
    assert summary["alreadyFinished"] is True  # the teacher was trained by the first run
    [distilled] = summary["distillations"]
    assert distilled["target"] == "tiny" and distilled["steps"] == distilled["totalSteps"]
    assert distilled["resumedFrom"].startswith("s3://edgetune/local/distilled/students/tiny/checkpoints/")
    assert distilled["model"] == "s3://edgetune/local/distilled/students/tiny/model"
    [export] = summary["exports"]
    names = [c["name"] for c in export["candidates"]]
    assert names == ["teacher-int8", "student", "student-int8"]
    met = [c for c in export["candidates"] if c["phase"] == "Succeeded"]
    assert export["candidate"] == min(met, key=lambda c: c["sizeBytes"])["name"]
    assert export["sizeBytes"] == min(c["sizeBytes"] for c in met)
    student = json.loads((students / "model" / "edgetune-model.json").read_text())
    # tiny-bert: 2 heads, 128 neurons and a 49 x 64 vocabulary table
    assert student["structure"] == {"layers": [{"heads": 1, "ffn": 64}], "embeddingRank": 16}
    assert student["distill"]["student"]["keptLayers"] == [2]
    manifest = json.loads((students.parents[1] / "exports" / "tiny" / "manifest.json").read_text())
    teacher_header = students.parents[1] / "model" / "edgetune-model.json"
    assert manifest["distill"]["teacher"]["headerSha256"] == sha256(teacher_header)
    assert [c["name"] for c in manifest["candidates"]] == names

    again, _ = edgetune_run(str(job_file), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    third = summary_of(again)
    assert third["distillations"][0]["alreadyFinished"] is True
    assert third["exports"][0]["reused"] is True and third["exports"][0]["candidate"] == export["candidate"]
