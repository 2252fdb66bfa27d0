"""Build the model to fine-tune: load it from its source, put a new head on it, freeze what is asked;
save it as an artifact and rebuild it from one.

Sources: `hf://NAME[@REV]` (transformers, AutoModelForSequenceClassification), `torchvision://NAME[@WEIGHTS]`
(`@none` for random init, default: the architecture's DEFAULT weights), and directories (local, file://,
or already fetched from s3://): a saved Hugging Face model (config.json) or an edgetune model artifact
(edgetune-model.json, see `model/artifact.py`), so a fine-tuned result can be fine-tuned again.

`load_artifact` rebuilds the trained model with no training state and no hub access, which is what the
exporter and a later fine-tune need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from edgetune_trainer.config import ModelSpec
from edgetune_trainer.model import hf_cache as hub_cache
from edgetune_trainer.model.artifact import (
    ARTIFACT_FILE,
    FORMAT_VERSION,
    ArtifactError,
    Preprocessing,
    sha256_file,
    verify_artifact,
)

Family = Literal["hf", "torchvision"]


class ModelLoadError(RuntimeError):
    """The model could not be built; the message says what to change."""


@dataclass
class LoadedModel:
    """A classifier ready to train, and what is needed to feed it and to save it."""

    model: nn.Module
    family: Family
    architecture: str  # torchvision model name, or the HF config's model_type
    head: list[str]  # qualified names of the new head's modules
    tokenizer: Any = None  # transformers tokenizer for text models

    def blocks(self) -> list[nn.Module]:
        return backbone_blocks(self)


def _split_ref(rest: str) -> tuple[str, str | None]:
    name, _, ref = rest.partition("@")
    return name, (ref or None)


def load_model(spec: ModelSpec, local_dir: Path | None = None) -> LoadedModel:
    """Build the model named by `spec.source`; `local_dir` is where an s3:// or local source now lies.
    `spec.pretrained: false` builds the same architecture (and tokenizer) with fresh random weights."""
    labels = spec.label_names()
    if spec.source.startswith("hf://"):
        name, revision = _split_ref(spec.source[len("hf://") :])
        return load_hf(name, revision, labels, origin=spec.source, pretrained=spec.pretrained)
    if spec.source.startswith("torchvision://"):
        name, weights = _split_ref(spec.source[len("torchvision://") :])
        return _load_torchvision(name, weights if spec.pretrained else "none", labels)
    if local_dir is None:
        raise ModelLoadError(f"model source {spec.source!r} was not fetched to a local folder")
    return load_model_dir(local_dir, labels, origin=spec.source, pretrained=spec.pretrained)


def load_model_dir(path: Path, labels: list[str], origin: str, pretrained: bool = True) -> LoadedModel:
    """A model from a directory: an edgetune artifact or a saved Hugging Face model."""
    if (path / ARTIFACT_FILE).is_file():
        return load_artifact_model(path, labels, pretrained=pretrained)
    if (path / "config.json").is_file():
        return load_hf(str(path), None, labels, origin=origin, pretrained=pretrained)
    if not path.exists():
        raise ModelLoadError(f"model source {origin!r}: {path} does not exist")
    raise ModelLoadError(
        f"model source {origin!r}: {path} holds neither a Hugging Face model (config.json) nor an edgetune "
        f"artifact ({ARTIFACT_FILE}); for a bare torch state dict, add {ARTIFACT_FILE} naming its architecture"
    )


def load_hf(name: str, revision: str | None, labels: list[str], origin: str, pretrained: bool = True) -> LoadedModel:
    """A transformers sequence classifier: `name` is a hub id (hf://) or a saved model folder.

    A hub id loads through the standard Hugging Face cache. When the hub cannot be reached (no network, or
    HF_HUB_OFFLINE=1) it loads from that cache alone, at once: huggingface_hub would otherwise retry each
    file for minutes before falling back to the same cache. `edgetune cache-model` seeds the cache."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized weights" is the point of a new head, not news
    hf_logging.disable_progress_bar()  # a bar per load, on every rank, says nothing a user needs
    hub_id = origin.startswith("hf://")
    offline = hub_id and not hub_cache.hub_reachable()
    where: dict[str, Any] = {"local_files_only": True} if offline else {}
    if revision:
        where["revision"] = revision
    head: dict[str, Any] = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    try:
        if pretrained:
            # ignore_mismatched_sizes: an existing head of another size is replaced
            model = AutoModelForSequenceClassification.from_pretrained(
                name, ignore_mismatched_sizes=True, **head, **where
            )
        else:
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(name, **head, **where))
        tokenizer = AutoTokenizer.from_pretrained(name, **where)
    except OSError as err:
        if offline:
            raise ModelLoadError(
                f"cannot load Hugging Face model {origin!r}: the hub ({hub_cache.hub_endpoint()}) cannot be "
                f"reached and the model is not in the local cache ({hub_cache.hub_cache_dir()}); put it there "
                f"with `edgetune cache-model {name} --from FOLDER`, or use a local or s3:// copy of the folder"
            ) from err
        raise ModelLoadError(
            f"cannot load Hugging Face model {origin!r}: {str(err).splitlines()[0]} "
            "(check the name; without network access use a local or s3:// copy of the model folder)"
        ) from err
    except ValueError as err:
        raise ModelLoadError(f"{origin!r} cannot be a sequence classifier: {str(err).splitlines()[0]}") from err
    base = getattr(model, model.base_model_prefix)
    head_names = [n for n, m in model.named_children() if m is not base]
    return LoadedModel(model, "hf", model.config.model_type, head_names, tokenizer)


def build_torchvision(name: str, weights: str | None, num_labels: int) -> tuple[nn.Module, str]:
    """A torchvision classifier with a fresh `num_labels` head; returns the model and the head's name."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = [m for m in available if name.lower()[:3] in m][:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelLoadError(f"unknown torchvision classification model {name!r}{hint}")
    weight_arg = None if weights in (None, "none") else weights
    try:
        model = torchvision.models.get_model(name, weights=weight_arg)
    except (ValueError, KeyError) as err:
        raise ModelLoadError(f"torchvision://{name}@{weights}: {err}") from err
    except (OSError, RuntimeError) as err:
        raise ModelLoadError(
            f"cannot fetch torchvision weights {weights!r} for {name}: {err} (without network access, "
            "use @none or a local artifact)"
        ) from err
    head_name = _last_linear(model)
    old: nn.Linear = model.get_submodule(head_name)
    set_submodule(model, head_name, nn.Linear(old.in_features, num_labels))
    return model, head_name


def _load_torchvision(name: str, weights: str | None, labels: list[str]) -> LoadedModel:
    weights = "DEFAULT" if weights is None else weights
    model, head_name = build_torchvision(name, weights, len(labels))
    return LoadedModel(model, "torchvision", name, [head_name])


def _last_linear(model: nn.Module) -> str:
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ModelLoadError(f"{type(model).__name__} has no linear classifier head to replace")
    return linears[-1]


def set_submodule(model: nn.Module, qualified: str, module: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def backbone_blocks(loaded: LoadedModel) -> list[nn.Module]:
    """The backbone's blocks from input to output, for `freeze: layers:N` (train the top N).

    Transformers: the encoder's layer list (the largest ModuleList). torchvision: the model's
    parameterised children with the head excluded, expanding a `features` Sequential (VGG, MobileNet).
    """
    model = loaded.model
    if loaded.family == "hf":
        base = getattr(model, model.base_model_prefix)
        lists = [m for m in base.modules() if isinstance(m, nn.ModuleList)]
        if not lists:
            raise ModelLoadError(f"cannot find the transformer layers of {loaded.architecture}")
        return list(max(lists, key=len))
    head_root = loaded.head[0].split(".")[0]
    blocks: list[nn.Module] = []
    for name, child in model.named_children():
        if name == "features" and isinstance(child, nn.Sequential):
            blocks += [m for m in child if _has_params(m)]
        elif name == head_root:
            if isinstance(child, nn.Sequential):  # e.g. VGG's classifier: its layers before the new head
                blocks += [m for m in list(child)[:-1] if _has_params(m)]
        elif _has_params(child):
            blocks.append(child)
    return blocks


def apply_freeze(loaded: LoadedModel, freeze: str) -> int:
    """Set requires_grad per `freeze`; return the number of trainable parameters."""
    model = loaded.model
    if freeze != "none":
        for param in model.parameters():
            param.requires_grad = False
        trainable: list[nn.Module] = [model.get_submodule(h) for h in loaded.head]
        if freeze.startswith("layers:"):
            count = int(freeze.split(":", 1)[1])
            blocks = loaded.blocks()
            if count > len(blocks):
                raise ModelLoadError(
                    f"freeze: {freeze} asks for {count} blocks but {loaded.architecture} has {len(blocks)}"
                )
            trainable += blocks[-count:]
            if loaded.family == "hf":
                base = getattr(model, model.base_model_prefix)
                pooler = getattr(base, "pooler", None)
                if isinstance(pooler, nn.Module):
                    trainable.append(pooler)
        for module in trainable:
            for param in module.parameters():
                param.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_artifact(
    loaded: LoadedModel,
    folder: Path,
    *,
    task: str,
    labels: list[str],
    preprocessing: Preprocessing,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `loaded` (unwrapped from DDP) as an artifact folder; return its header."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    if loaded.family == "hf":
        model.save_pretrained(folder, safe_serialization=True)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(folder)
    else:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ARTIFACT_FILE
    }
    header = {
        "formatVersion": FORMAT_VERSION,
        "family": loaded.family,
        "architecture": loaded.architecture,
        "head": loaded.head,
        "task": task,
        "labels": labels,
        "preprocessing": preprocessing.to_dict(),
        "files": files,
        **(extra or {}),
    }
    (folder / ARTIFACT_FILE).write_text(json.dumps(header, indent=2, sort_keys=True))
    return header


def load_artifact(folder: Path) -> tuple[LoadedModel, dict[str, Any]]:
    """Rebuild the trained model (eval mode, CPU) and return it with the artifact's header."""
    header = verify_artifact(folder)
    loaded = load_artifact_model(folder, header["labels"], header=header)
    loaded.model.eval()
    return loaded, header


def load_artifact_model(
    folder: Path, labels: list[str], header: dict[str, Any] | None = None, pretrained: bool = True
) -> LoadedModel:
    """The artifact's model with a head for `labels` (the artifact's own head when the count matches);
    `pretrained=False`: its architecture with random weights."""
    header = header or verify_artifact(folder)
    if header["family"] == "hf" and header.get("structure") and pretrained:
        return _load_restructured(folder, header)
    if header["family"] == "hf":
        return load_hf(str(folder), None, labels, origin=str(folder), pretrained=pretrained)
    from safetensors.torch import load_file

    model, head_name = build_torchvision(header["architecture"], None, len(header["labels"]))
    if pretrained:
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    loaded = LoadedModel(model, "torchvision", header["architecture"], [head_name])
    if len(labels) != len(header["labels"]):
        old = model.get_submodule(head_name)
        set_submodule(model, head_name, nn.Linear(old.in_features, len(labels)))
    return loaded


def _load_restructured(folder: Path, header: dict[str, Any]) -> LoadedModel:
    """A pruned or factorized transformers model, whose config no longer gives its shapes: built from the
    config, reshaped to the header's `structure` (model/structure.py), then loaded strictly (a shape or
    name that does not match raises, where from_pretrained would re-initialise it)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from edgetune_trainer.model.structure import apply_structure  # structure.py imports this module

    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
    apply_structure(model, header["structure"])
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"pruned model at {folder} does not match its recorded structure: {err}") from err
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(model, "hf", header["architecture"], list(header["head"]), tokenizer)
