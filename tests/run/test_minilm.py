"""The pretrained example as a user runs it, with no hub: `edgetune cache-model` seeds a Hugging Face cache,
then `edgetune run` fine-tunes the real all-MiniLM-L6-v2 (examples/minilm-sentiment.yaml) and its twin from
random weights (minilm-sentiment-scratch.yaml) on the same data, steps and seed. The evaluation reviews use
none of the training words, so only pretraining can read them: the pretrained run must win by ten points or
more, the twin stays near chance, and the int8 export of the real model meets its budgets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import hfhub
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.trainer, pytest.mark.slow]


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh HF cache seeded from the packaged model, and a hub that refuses every connection."""
    env = {**hfhub.hub_free_env(tmp_path_factory.mktemp("hf-home")), "EDGETUNE_METRICS_PORT": "0"}
    seeded = hfhub.cache_model(env, hfhub.MINILM)
    assert seeded.returncode == 0, seeded.stderr
    return env


def run_example(name: str, env: dict[str, str], storage: Path) -> dict[str, Any]:
    done = subprocess.run(
        [*hfhub.EDGETUNE, "run", str(ROOT / "examples" / name), "--json", "--storage", str(storage)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.stdout, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_pretrained_minilm_beats_its_random_twin(offline_env: dict[str, str], tmp_path: Path) -> None:
    pretrained = run_example("minilm-sentiment.yaml", offline_env, tmp_path)
    scratch = run_example("minilm-sentiment-scratch.yaml", offline_env, tmp_path)
    for summary in (pretrained, scratch):
        assert summary["steps"] == summary["totalSteps"] == 75  # 800 reviews / (2 x 16) x 3 epochs
    assert pretrained["phase"] == "Succeeded", pretrained["message"]
    [export] = pretrained["exports"]
    assert export["budgetsMet"] and export["sizeBytes"] < 25e6
    gap = pretrained["evalAccuracy"] - scratch["evalAccuracy"]
    assert pretrained["evalAccuracy"] >= 0.75, pretrained["evalAccuracy"]
    assert scratch["evalAccuracy"] <= 0.65, scratch["evalAccuracy"]  # chance is 0.5
    assert gap >= 0.10, (pretrained["evalAccuracy"], scratch["evalAccuracy"])
