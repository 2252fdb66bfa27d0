"""End to end on a kind cluster: hack/e2e-kind.sh (see its header) builds or pulls every image, installs
KubeRay and the chart (with MinIO), runs examples/quickstart-kind.yaml to phase Succeeded, exports included,
then injects faults on real pods.

Needs a reachable Docker engine; skipped, with the reason, where none answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "hack" / "e2e-kind.sh"
TIMEOUT_S = 3800  # the script's own E2E_TIMEOUT (3600 s) fails it first, naming its step
TERM_GRACE_S = 180  # after a timeout: time for the script's trap to dump diagnostics and delete the cluster


def missing_prerequisite() -> str | None:
    """Why this machine cannot run the kind e2e, or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker binary on PATH (the kind e2e needs a Docker engine)"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine is not reachable: 'docker info' timed out after 30 s"
    if info.returncode != 0:
        detail = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the Docker engine is not reachable: 'docker info' failed ({detail})"
    return None  # kind, helm and kubectl: hack/e2e-kind.sh fetches whichever is missing


_reason = missing_prerequisite()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + TERM_GRACE_S + 60)
def test_quickstart_on_kind() -> None:
    # Its own session, so that a timeout can stop the script and all its children (kubectl, docker) with
    # SIGTERM: the script's trap then dumps diagnostics and deletes the cluster before it exits.
    process = subprocess.Popen(
        ["bash", str(SCRIPT)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"hack/e2e-kind.sh ran past {TIMEOUT_S} s; its output:\n{output[-20000:]}")
    print(output[-20000:])  # shown by pytest on failure, or with -s
    assert process.returncode == 0, f"hack/e2e-kind.sh exited {process.returncode}:\n{output[-20000:]}"
    assert "FineTuneJob quickstart-kind Succeeded" in output, output[-20000:]
