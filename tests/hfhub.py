"""A Hugging Face environment with no hub, for the tests and benchmarks that load a real hub id.

huggingface_hub reads HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE once, when first imported, so these are
environments for subprocesses (`edgetune run`, `edgetune cache-model`, a loader script), not for this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from s3server import free_port

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
EDGETUNE = [sys.executable, "-m", "edgetune_operator.cli"]


def hub_free_env(home: Path) -> dict[str, str]:
    """This environment with HF_HOME=`home`, none of the variables that would override where or whether the
    hub is asked, and HF_ENDPOINT a closed loopback port: every connection to the hub is refused at once."""
    env = {**os.environ, "HF_HOME": str(home), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    for key in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    return env


def cache_model(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`edgetune cache-model ARGS...` in `env`."""
    return subprocess.run(
        [*EDGETUNE, "cache-model", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
