"""The student of a distillation, built from the fine-tuned teacher (or named in the spec).

    build_student(teacher, distill, model_spec, local_dir)   the student, ready to train

A cut keeps `layers` of the teacher's transformer layers, evenly spaced and ending with the last one (of 6,
layers: 2 keeps layers 3 and 6, as the "skip" students of Patient Knowledge Distillation do), with the
teacher's embeddings, those layers' weights and its head copied: the student starts from what the teacher
knows and distillation closes the gap. `hiddenSize` makes a narrower model of the same architecture, which
no teacher weight fits: it starts from random weights, sharing only the tokenizer. `embeddingRank`
factorizes the (cut) student's vocabulary table into two factors (model/structure.py), and `prune` removes
heads and neurons (model/prune.py). A named `source` is
loaded as the job's own model is, with a new head (training/distill.py).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from torch import nn

from edgetune_trainer.config import DistillSpec
from edgetune_trainer.model.loading import LoadedModel, ModelLoadError
from edgetune_trainer.model.prune import prune_encoder
from edgetune_trainer.model.structure import factorize_embeddings

# The layer index in a transformers encoder's parameter names: bert.encoder.layer.3.attention...,
# distilbert.transformer.layer.3.ffn...
_LAYER = re.compile(r"\.layer\.(\d+)\.")


def kept_layers(teacher_layers: int, layers: int) -> list[int]:
    """The teacher layers a student of `layers` keeps: evenly spaced, the last one always among them."""
    if layers > teacher_layers:
        raise ModelLoadError(f"distill.student.layers is {layers}, but the teacher has only {teacher_layers} layers")
    return [round((index + 1) * teacher_layers / layers) - 1 for index in range(layers)]


def student_problem(distill: DistillSpec, teacher_config: dict[str, Any]) -> str | None:
    """What makes this student impossible for this teacher (its transformers config.json), or None: checked
    in the driver before any worker starts, so a bad spec fails in seconds with the reason."""
    spec = distill.student
    if spec.source is not None:
        return None
    layers, hidden = teacher_config.get("num_hidden_layers"), teacher_config.get("hidden_size")
    heads = teacher_config.get("num_attention_heads")
    if layers is None or hidden is None or heads is None:
        kind = teacher_config.get("model_type", "this model")
        return f"{kind} is not a transformer encoder edgetune can cut: name a smaller model in student.source"
    if spec.layers is not None and spec.layers > layers:
        return f"distill.student.layers is {spec.layers}, but the teacher has only {layers} layers"
    if spec.hidden_size is not None and spec.hidden_size % (hidden // heads):
        return (
            f"distill.student.hiddenSize {spec.hidden_size} must be a multiple of the teacher's attention head size "
            f"({hidden // heads}), so that the student keeps whole heads"
        )
    if spec.embedding_rank is not None and spec.embedding_rank >= hidden:
        return f"distill.student.embeddingRank {spec.embedding_rank} must be below the teacher's hidden size ({hidden})"
    return None


def build_student(teacher: LoadedModel, distill: DistillSpec) -> tuple[LoadedModel, dict[str, Any]]:
    """The student cut from `teacher` (and pruned) as `distill` says, with a record of how it was made (for
    the artifact header and the manifest). A named student source is loaded by the caller, as the job's
    own model is."""
    spec = distill.student
    if teacher.family != "hf":
        raise ModelLoadError(
            "a cut of the teacher (student.layers, hiddenSize, embeddingRank) or pruning needs a transformers model"
        )
    config = copy.deepcopy(teacher.model.config)
    record: dict[str, Any] = {"kind": "cut", "teacherLayers": config.num_hidden_layers}
    if spec.hidden_size is not None:
        student = _narrow(config, spec.hidden_size)
        record.update(hiddenSize=spec.hidden_size, layers=config.num_hidden_layers, initialisation="random")
    else:
        student = teacher.model
        record["initialisation"] = "teacher"
    if spec.layers is not None:
        keep = kept_layers(config.num_hidden_layers, spec.layers)
        student = _cut(student, keep)
        record.update(layers=spec.layers, keptLayers=[index + 1 for index in keep])
    else:
        student = copy.deepcopy(student) if student is teacher.model else student
    if distill.prune is not None:
        record["pruned"] = prune_encoder(student, distill.prune.heads, distill.prune.ffn)
    if spec.embedding_rank is not None:
        record["factorized"] = factorize_embeddings(student, spec.embedding_rank)
    record["parameters"] = sum(p.numel() for p in student.parameters())
    student.train()
    return LoadedModel(student, "hf", teacher.architecture, list(teacher.head), teacher.tokenizer), record


def _narrow(config: Any, hidden_size: int) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    head_size = config.hidden_size // config.num_attention_heads
    if hidden_size % head_size:
        raise ModelLoadError(
            f"distill.student.hiddenSize {hidden_size} must be a multiple of the teacher's attention head size "
            f"({head_size}), so that the student keeps whole heads"
        )
    config.num_attention_heads = hidden_size // head_size
    config.intermediate_size = config.intermediate_size * hidden_size // config.hidden_size
    config.hidden_size = hidden_size
    return AutoModelForSequenceClassification.from_config(config)


def _cut(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of `model` with only the layers `keep`, renumbered 0..len(keep)-1, weights copied."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)  # type: ignore[attr-defined]
    config.num_hidden_layers = len(keep)
    student = AutoModelForSequenceClassification.from_config(config)
    renumber = {old: new for new, old in enumerate(keep)}
    state: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        found = _LAYER.search(name)
        if found is None:
            state[name] = tensor
        elif int(found.group(1)) in renumber:
            new = renumber[int(found.group(1))]
            state[name[: found.start()] + f".layer.{new}." + name[found.end() :]] = tensor
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if "position_ids" not in name]:
        raise ModelLoadError(
            f"cannot cut a {config.model_type} model into layers: its parameter names do not follow the "
            f"'.layer.N.' pattern (missing {missing[:3]}, unexpected {unexpected[:3]}); name a student source instead"
        )
    return student
