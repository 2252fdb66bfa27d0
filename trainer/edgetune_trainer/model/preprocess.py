"""Turn raw inputs into model tensors. Training, evaluation, export checks and `edgetune predict` all
call these, so an exported model sees exactly what the trained one saw."""

from __future__ import annotations

from typing import Any

import torch

from edgetune_trainer.model.artifact import Preprocessing

TEXT_INPUTS = ("input_ids", "attention_mask")


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Token ids and attention mask, padded to `max_length` so every batch has one shape."""
    encoded = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length", return_tensors="pt")
    return {name: encoded[name] for name in TEXT_INPUTS}


def image_transform(prep: Preprocessing) -> Any:
    """PIL image -> normalized float tensor [3, size, size]."""
    from torchvision.transforms import v2

    size = int(prep.image_size or 224)
    return v2.Compose(
        [
            v2.Lambda(lambda image: image.convert("RGB")),
            v2.PILToTensor(),
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(prep.mean), std=list(prep.std)),
        ]
    )


def encode_images(images: list[Any], prep: Preprocessing) -> torch.Tensor:
    transform = image_transform(prep)
    return torch.stack([transform(image) for image in images])
