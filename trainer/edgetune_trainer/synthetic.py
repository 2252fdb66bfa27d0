"""Tiny real models built from a config, and learnable generated data: for the quickstart, tests and
benchmarks on machines with no model hub and no dataset downloads.

The models are the real architectures (BERT via transformers, ResNet via torchvision) at toy sizes
with random weights; the data has a signal a model can learn in a few hundred steps, so "loss falls
and accuracy rises above chance" is a meaningful check.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "excellent", "wonderful", "superb", "brilliant", "delightful", "moving", "fun", "loved"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "weak", "messy", "tedious", "hated"]
FILLER = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actors",
    "story",
    "was",
    "really",
    "quite",
    "and",
    "but",
    "very",
    "ending",
    "music",
    "scenes",
    "i",
    "it",
    "this",
    "director",
    "cast",
    "script",
    "felt",
    "overall",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def review(rng: random.Random, label: int) -> str:
    """A short review whose sentiment words mostly agree with `label` (1 positive, 0 negative)."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(5, 12))]
    main, other = (POSITIVE, NEGATIVE) if label == 1 else (NEGATIVE, POSITIVE)
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(main))
    if rng.random() < 0.2:  # a contrary word now and then, so the task is not trivially separable
        words.insert(rng.randrange(len(words) + 1), rng.choice(other))
    return " ".join(words)


def write_reviews(path: Path, count: int, seed: int = 0) -> Path:
    """A JSONL file of {"text", "label"} reviews, balanced between the two labels."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            label = index % 2
            handle.write(json.dumps({"text": review(rng, label), "label": label}) + "\n")
    return path


def write_tiny_bert(folder: Path, hidden: int = 64, layers: int = 2, heads: int = 2, max_length: int = 64) -> Path:
    """A BERT of the given toy size with a WordPiece vocabulary covering the synthetic reviews, saved
    with save_pretrained (config.json, model.safetensors, tokenizer) exactly like a hub model folder."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + sorted(set(POSITIVE + NEGATIVE + FILLER)))}
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_length,
    )
    folder.mkdir(parents=True, exist_ok=True)
    BertForMaskedLM(config).save_pretrained(folder)
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    return folder


def write_image_folder(folder: Path, classes: int = 2, per_class: int = 40, size: int = 32, seed: int = 0) -> Path:
    """An image folder (one sub-folder per class, PNG files) where each class has its own dominant colour
    channel plus noise: learnable by a small CNN in a few steps."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(classes):
        class_dir = folder / f"class{label}"
        class_dir.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8)
            pixels[:, :, label % 3] += np.uint8(100 + 30 * (label // 3))
            Image.fromarray(pixels).save(class_dir / f"{index:04d}.png")
    return folder
