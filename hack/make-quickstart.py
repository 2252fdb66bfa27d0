"""Regenerate examples/quickstart/: a 2-layer BERT built from a config (random weights) and 1,000
generated reviews. Deterministic; the outputs are committed so the quickstart needs no network."""

from pathlib import Path

from edgetune_trainer.synthetic import write_reviews, write_tiny_bert

ROOT = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
write_tiny_bert(ROOT / "tiny-bert", hidden=64, layers=2, heads=2, max_length=64)
write_reviews(ROOT / "reviews.jsonl", 1000, seed=11)
print(f"wrote {ROOT}")
