"""Regenerate examples/minilm/: the train and eval splits of the shifted-vocabulary reviews
(edgetune_trainer.synthetic_shift). Deterministic; the files are committed, and a unit test fails when
they and the generator disagree."""

from pathlib import Path

from edgetune_trainer.synthetic_shift import SPLITS, write_split

ROOT = Path(__file__).resolve().parents[1] / "examples" / "minilm"
for split in SPLITS:
    print(f"wrote {write_split(ROOT, split)}")
