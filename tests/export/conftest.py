"""Trained tiny models for the export tier: real BERT and ResNet architectures, trained here for a few
seconds on learnable generated data, saved as model artifacts exactly as the trainer saves them.

A model that has learned is what makes "int8 agrees with fp32" and "accuracy drop" meaningful: a
random-init model's near-tied logits flip under any perturbation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from export_support import IMAGE_LABELS, IMAGE_SIZE, TEXT_LABELS, TEXT_LENGTH, Trained

from edgetune_trainer.config import ModelSpec
from edgetune_trainer.model.artifact import Preprocessing
from edgetune_trainer.model.loading import load_model, save_artifact
from edgetune_trainer.model.preprocess import encode_images, encode_texts
from edgetune_trainer.synthetic import write_image_folder, write_reviews, write_tiny_bert


def _train(model: torch.nn.Module, batches: Any, steps: int, lr: float) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = batches()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _read_reviews(path: Path) -> list[tuple[str, int]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(row["text"], int(row["label"])) for row in rows]


def _read_images(folder: Path) -> list[tuple[Any, int]]:
    from PIL import Image

    pairs = []
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            pairs.append((image.convert("RGB"), int(path.parent.name.removeprefix("class"))))
    return pairs


@pytest.fixture(scope="session")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A 2-layer BERT (hidden 64) trained 150 steps on generated reviews: ~95 % eval accuracy."""
    root = tmp_path_factory.mktemp("text-model")
    torch.manual_seed(0)
    base = write_tiny_bert(root / "tiny-bert", max_length=64)
    loaded = load_model(ModelSpec(source=str(base), task="text-classification", num_labels=2, labels=TEXT_LABELS), base)
    train = _read_reviews(write_reviews(root / "train.jsonl", 800, seed=0))
    examples = _read_reviews(write_reviews(root / "eval.jsonl", 200, seed=1))
    encoded = encode_texts(loaded.tokenizer, [text for text, _ in train], TEXT_LENGTH)
    targets = torch.tensor([label for _, label in train])

    def batch() -> torch.Tensor:
        index = torch.randint(0, len(train), (32,))
        ids, mask = encoded["input_ids"][index], encoded["attention_mask"][index]
        return loaded.model(input_ids=ids, attention_mask=mask, labels=targets[index]).loss

    _train(loaded.model, batch, steps=150, lr=1e-3)
    prep = Preprocessing("text", max_length=TEXT_LENGTH)
    artifact = root / "artifact"
    save_artifact(
        loaded,
        artifact,
        task="text-classification",
        labels=TEXT_LABELS,
        preprocessing=prep,
        extra={"checkpoint": "s3://test/checkpoints/checkpoint_000150", "step": 150},
    )
    return Trained(loaded, artifact, examples, TEXT_LABELS, prep)


@pytest.fixture(scope="session")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """resnet18 (random init) trained 60 steps on 32-pixel colour classes."""
    root = tmp_path_factory.mktemp("image-model")
    torch.manual_seed(0)
    loaded = load_model(
        ModelSpec(source="torchvision://resnet18@none", task="image-classification", num_labels=3, labels=IMAGE_LABELS)
    )
    prep = Preprocessing("image", image_size=IMAGE_SIZE)
    train = _read_images(write_image_folder(root / "train", classes=3, per_class=60, size=IMAGE_SIZE, seed=0))
    examples = _read_images(write_image_folder(root / "eval", classes=3, per_class=40, size=IMAGE_SIZE, seed=1))
    pixels = encode_images([image for image, _ in train], prep)
    targets = torch.tensor([label for _, label in train])

    def batch() -> torch.Tensor:
        index = torch.randint(0, len(train), (32,))
        return torch.nn.functional.cross_entropy(loaded.model(pixels[index]), targets[index])

    _train(loaded.model, batch, steps=60, lr=1e-3)
    artifact = root / "artifact"
    save_artifact(loaded, artifact, task="image-classification", labels=IMAGE_LABELS, preprocessing=prep)
    return Trained(loaded, artifact, examples, IMAGE_LABELS, prep)


def _with_outlier(trained: Trained, folder: Path, parameter: str, edit: Any) -> Trained:
    """A copy of `trained` with one weight edited in place, saved as a new artifact."""
    import copy

    loaded = copy.deepcopy(trained.loaded)
    with torch.no_grad():
        edit(loaded.model.get_parameter(parameter))
    task = "text-classification" if trained.prep.kind == "text" else "image-classification"
    if folder.exists():
        shutil.rmtree(folder)
    save_artifact(loaded, folder, task=task, labels=trained.labels, preprocessing=trained.prep)
    return Trained(loaded, folder, trained.examples, trained.labels, trained.prep)


@pytest.fixture(scope="session")
def text_model_outlier(text_model: Trained, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The text model with one huge value in the embedding row of [MASK], a token no input contains.

    The fp32 model is unchanged (the row is never looked up), but per-tensor int8 quantization of the
    embedding table takes its scale from that value, rounding every real embedding to zero: int8
    accuracy collapses to chance and one layer, bert.embeddings.word_embeddings, is to blame.
    """
    mask_id = text_model.loaded.tokenizer.convert_tokens_to_ids("[MASK]")

    def edit(weight: torch.Tensor) -> None:
        weight[mask_id, 0] = 500.0

    return _with_outlier(
        text_model, tmp_path_factory.mktemp("text-outlier") / "artifact", "bert.embeddings.word_embeddings.weight", edit
    )


@pytest.fixture(scope="session")
def image_model_outlier(image_model: Trained, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The image model with a large constant added to one input column of the classifier (fc).

    Every logit moves by the same amount, so fp32 predictions do not change; but each output channel of
    fc now holds that large value, so int8 weight scales round the real weights to zero and int8
    predictions collapse to one class. fc is the layer to keep in fp32.
    """

    def edit(weight: torch.Tensor) -> None:
        weight[:, 0] += 60.0

    return _with_outlier(image_model, tmp_path_factory.mktemp("image-outlier") / "artifact", "fc.weight", edit)
