"""Forward passes and the held-out evaluation of a training run (loss, accuracy, macro-F1), reduced
across ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetune_trainer.training.plan import private_generator


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def forward(model: nn.Module, batch: dict[str, torch.Tensor], family: str) -> torch.Tensor:
    """Logits for a batch, whatever the model family."""
    if family == "hf":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return model(batch["pixel_values"])


def all_reduce_floats(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def evaluate(
    model: nn.Module, dataset: Dataset, family: str, labels: int, batch: int, device: torch.device
) -> dict[str, float]:
    """Accuracy and macro-F1 over every rank's eval shard (sums all-reduced, so all ranks agree)."""
    model.eval()
    counts = [0.0] * (2 + 3 * labels)  # correct, total, then tp/fp/fn per class
    with torch.no_grad():
        for item in DataLoader(dataset, batch_size=batch, generator=private_generator()):
            item = {k: v.to(device) for k, v in item.items()}
            predicted = forward(model, item, family).argmax(-1)
            truth = item["labels"]
            counts[0] += float((predicted == truth).sum())
            counts[1] += float(truth.numel())
            for c in range(labels):
                counts[2 + 3 * c] += float(((predicted == c) & (truth == c)).sum())
                counts[3 + 3 * c] += float(((predicted == c) & (truth != c)).sum())
                counts[4 + 3 * c] += float(((predicted != c) & (truth == c)).sum())
    model.train()
    counts = all_reduce_floats(counts, device)
    f1s = []
    for c in range(labels):
        tp, fp, fn = counts[2 + 3 * c : 5 + 3 * c]
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {
        "eval_accuracy": counts[0] / max(1.0, counts[1]),
        "eval_macro_f1": sum(f1s) / labels,
        "eval_examples": counts[1],
    }
