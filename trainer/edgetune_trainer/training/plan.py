"""The schedule of a run, a pure function of the config and the shard size: steps per epoch, total
steps, when to report progress and when to checkpoint; the learning-rate factor; each epoch's data order.
Every rank computes the same plan, so ranks never diverge on when to call a collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from edgetune_trainer.config import TrainJobConfig

REPORTS_PER_RUN = 20  # progress events per run, besides checkpoints and evals


@dataclass
class Plan:
    """How many steps, and when to report and checkpoint."""

    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    progress_every: int
    checkpoint_every_steps: int | None
    checkpoint_every_epochs: int | None


def make_plan(config: TrainJobConfig, shard_size: int) -> Plan:
    training = config.training
    micro = math.ceil(shard_size / training.batch_size_per_worker)
    per_epoch = math.ceil(micro / training.gradient_accumulation)
    total = training.epochs * per_epoch if training.epochs else training.max_steps
    if training.max_steps:
        total = min(total, training.max_steps)
    every_steps = config.checkpoint.every_steps
    every_epochs = None if every_steps else (config.checkpoint.every_epochs or 1)
    return Plan(micro, per_epoch, total, max(1, total // REPORTS_PER_RUN), every_steps, every_epochs)


def linear_schedule(total_steps: int, warmup_ratio: float) -> Any:
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def epoch_order(size: int, seed: int, epoch: int, rank: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + rank)
    return torch.randperm(size, generator=generator).tolist()


def private_generator() -> torch.Generator:
    """A DataLoader draws its base seed from the global RNG on every iteration unless given its own
    generator; that would make dropout after a resume depend on how many loaders were created."""
    return torch.Generator().manual_seed(0)
