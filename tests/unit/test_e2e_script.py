"""hack/e2e-kind.sh's own plumbing, without Docker: a fake `docker` that answers `info` and nothing else.

Found in CI's run of the kind tier: the run had ended, but its watchdog's `sleep` held the output pipe open,
so tests/e2e (which reads the script's output to its end) waited for the whole E2E_TIMEOUT.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "hack" / "e2e-kind.sh"


def test_a_failed_run_ends_its_output_at_once(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"docker": '[ "$1" = info ] && exit 0; exit 1', "kind": "exit 0", "helm": "exit 0", "kubectl": "exit 0"}
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "E2E_TIMEOUT": "600",
        "EDGETUNE_BUILD_IMAGES": "0",  # nothing is built: the first missing image ends the run
    }
    process = subprocess.Popen(
        ["bash", str(SCRIPT)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, _ = process.communicate(timeout=60)  # without the fix: blocks for E2E_TIMEOUT
    assert process.returncode != 0
    assert "cannot be pulled" in output and "e2e-kind: FAILED" in output, output[-3000:]


def test_the_network_policy_enforcer_is_one_version_everywhere() -> None:
    # The kind e2e loads kube-router's image by name, ensure-images.sh builds it under that name from the Go
    # module go.mod pins, and the DaemonSet runs it: a bump in one place alone runs an image nobody built.
    hack = REPO_ROOT / "hack"
    image = re.compile(r"docker\.io/cloudnativelabs/kube-router:(v[0-9.]+)")
    found = {
        "ensure-images.sh": image.findall((hack / "images" / "ensure-images.sh").read_text()),
        "e2e-kind.sh": image.findall(SCRIPT.read_text()),
        "kube-router-netpol.yaml": [
            image.fullmatch(container["image"]).group(1)  # type: ignore[union-attr]
            for doc in yaml.safe_load_all((hack / "kube-router-netpol.yaml").read_text())
            if doc["kind"] == "DaemonSet"
            for container in doc["spec"]["template"]["spec"]["containers"]
        ],
        "go.mod": re.findall(
            r"github\.com/cloudnativelabs/kube-router/v2 (v[0-9.]+)",
            (hack / "images" / "kube-router" / "go.mod").read_text(),
        ),
    }
    versions = {version for tags in found.values() for version in tags}
    assert all(found.values()) and len(versions) == 1, found


def test_the_e2e_prometheus_image_is_the_module_the_suite_builds() -> None:
    # hack/images/prometheus.sh builds the image the manifest names from the module go.mod pins, which is also
    # the Prometheus and promtool of the test suite (hack/build-prometheus.sh): Prometheus 3.MM.P is v0.3MM.P.
    hack = REPO_ROOT / "hack"
    (image,) = [
        container["image"]
        for doc in yaml.safe_load_all((hack / "e2e-prometheus.yaml").read_text())
        if doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]
    name, tag = image.rsplit(":", 1)
    major, minor, patch = tag.removeprefix("v").split(".")
    (module,) = re.findall(
        r"github\.com/prometheus/prometheus (v[0-9.]+)", (hack / "images" / "prometheus" / "go.mod").read_text()
    )
    assert name == "quay.io/prometheus/prometheus" and major == "3"
    assert module == f"v0.3{int(minor):02d}.{patch}", (image, module)
