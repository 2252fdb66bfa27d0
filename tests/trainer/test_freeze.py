"""Freeze modes through a real DDP run: frozen parameters come out bit-identical, trained ones change."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from jobconfigs import job_config

from edgetune_trainer.config import load_train_config
from edgetune_trainer.model.loading import build_torchvision, load_artifact
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.synthetic import write_image_folder
from edgetune_trainer.training.train import run_training

pytestmark = [pytest.mark.trainer, pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def trained_state(raw: dict) -> dict[str, torch.Tensor]:
    config = load_train_config(raw)
    result = run_training(config, sinks=[])
    assert result.steps == result.total_steps > 0
    storage = JobStorage(config.storage, config.namespace, config.name)
    with tempfile.TemporaryDirectory() as folder:
        loaded, _ = load_artifact(storage.download_dir("model", Path(folder)))
        return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def test_layers_1_trains_only_the_top_block_and_head(s3_server, bucket, tiny_bert, reviews) -> None:
    """Also runs gradient accumulation (2) and bf16 autocast, the paths the other runs leave out."""
    from transformers import AutoModelForSequenceClassification

    raw = job_config(
        "freeze-text",
        bucket,
        s3_server,
        tiny_bert,
        reviews,
        model={"freeze": "layers:1"},
        training={"epochs": 0, "maxSteps": 10, "gradientAccumulation": 2, "precision": "bf16"},
    )
    after = trained_state(raw)
    before = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).state_dict()
    frozen = [k for k in before if k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    trained = [k for k in before if k.startswith(("bert.encoder.layer.1.", "classifier.")) and "LayerNorm" not in k]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"{key} changed but is frozen"
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.startswith("bert."))


def test_backbone_freeze_trains_only_the_new_head(s3_server, bucket, tiny_bert, reviews, tmp_path) -> None:
    images = write_image_folder(tmp_path / "images", classes=2, per_class=24, size=32)
    raw = job_config(
        "freeze-image", bucket, s3_server, tiny_bert, reviews, training={"epochs": 1, "learningRate": 0.01}
    )
    raw["model"] = {
        "source": "torchvision://resnet18@none",
        "task": "image-classification",
        "numLabels": 2,
        "freeze": "backbone",
    }
    raw["dataset"] = {"source": str(images), "validationFraction": 0.25, "imageSize": 32}
    after = trained_state(raw)
    torch.manual_seed(raw["training"]["seed"])  # the trainer builds the model right after seeding
    before_model, head = build_torchvision("resnet18", "none", 2)
    before = before_model.state_dict()
    parameters = {name for name, _ in before_model.named_parameters()}
    for key in parameters:
        if key.startswith(f"{head}."):
            assert not torch.equal(before[key], after[key]), f"head {key} did not train"
        else:
            assert torch.equal(before[key], after[key]), f"{key} changed but the backbone is frozen"
