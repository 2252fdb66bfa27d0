"""`edgetune validate` and `edgetune crd`, run as a user runs them (a subprocess, exit codes, output)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgetune_operator.crdgen import render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]


def edgetune(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetune_operator.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_validate_accepts_the_examples() -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    result = edgetune("validate", *examples)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("is valid") == len(examples) == 7


def test_validate_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: edgetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: bad}\nspec:\n"
        "  model: {source: hf://bert-base-uncased, task: text-classification, numLabels: 2, freeze: 'layers:-1'}\n"
        "  dataset: {source: 's3://'}\n  training: {epochs: 0, maxSteps: 0}\n"
    )
    result = edgetune("validate", str(bad))
    assert result.returncode == 1
    assert "invalid (3 problems)" in result.stdout
    for path in ("spec.model.freeze", "spec.dataset.source", "spec.training.epochs"):
        assert f"  - {path}: " in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_validate_handles_multi_document_files_and_stdin() -> None:
    quickstart = (ROOT / "examples" / "quickstart.yaml").read_text()
    result = edgetune("validate", "-", stdin=quickstart + "\n---\n" + "kind: RayJob\n")
    assert result.returncode == 1
    assert "<stdin>: FineTuneJob 'quickstart' is valid" in result.stdout
    assert "<stdin> (document 2): invalid" in result.stdout


def test_validate_reports_unreadable_and_malformed_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [1, 2\n")
    result = edgetune("validate", str(broken), str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "YAML syntax error at line 2" in result.stdout
    assert "cannot read the file" in result.stdout
    assert "Traceback" not in result.stderr


def test_crd_command_prints_the_checked_in_crd(tmp_path: Path) -> None:
    printed = edgetune("crd")
    assert printed.returncode == 0
    assert printed.stdout == render_crd_yaml()
    out = tmp_path / "crd.yaml"
    assert edgetune("crd", "-o", str(out)).returncode == 0
    assert out.read_text() == render_crd_yaml()
