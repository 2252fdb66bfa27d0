"""Structured pruning of a BERT-style encoder: whole attention heads and feed-forward neurons removed.

    prune_encoder(model, heads, ffn)   remove that share of each layer's heads and neurons; what went

Removed, not masked: torch.nn.utils.prune zeroes weights behind a mask and keeps every tensor its full
size, so the exported ONNX file would not shrink by a byte. Transformers 5 dropped `prune_heads`, but
keeps `pytorch_utils.prune_linear_layer`, which cuts a Linear down to chosen rows or columns
(structure.py uses it); this module only decides which ones go. BERT's attention reshapes by `-1` heads,
so a layer runs with fewer heads unchanged.

Importance is weight magnitude, which needs no data: a head scores the norm of its value projection
times the norm of its slice of the output projection (the path its contribution takes), a neuron the
norm of its input row times the norm of its output column. The least important go; the distillation
run that follows is the recovery fine-tune.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetune_trainer.model.structure import encoder_layers, keep_heads, keep_neurons, structure_of


def head_importance(layer: nn.Module) -> torch.Tensor:
    attention = layer.attention.self  # type: ignore[union-attr]
    size = attention.attention_head_size
    value = attention.value.weight.detach().view(-1, size, attention.value.in_features)
    output = layer.attention.output.dense.weight.detach().view(-1, value.shape[0], size)  # type: ignore[union-attr]
    return value.norm(dim=(1, 2)) * output.norm(dim=(0, 2))


def neuron_importance(layer: nn.Module) -> torch.Tensor:
    into = layer.intermediate.dense.weight.detach()  # type: ignore[union-attr]
    out_of = layer.output.dense.weight.detach()  # type: ignore[union-attr]
    return into.norm(dim=1) * out_of.norm(dim=0)


def _keep_top(scores: torch.Tensor, share_removed: float) -> torch.Tensor:
    """Indices (ascending) of the most important entries, all but `share_removed` of them, at least one."""
    keep = max(1, len(scores) - round(len(scores) * share_removed))
    return torch.sort(torch.topk(scores, keep).indices).values


def prune_encoder(model: nn.Module, heads: float, ffn: float) -> dict[str, Any]:
    """Remove `heads` of every layer's attention heads and `ffn` of its feed-forward neurons, the least
    important by weight magnitude; return what was removed and the resulting structure."""
    layers = encoder_layers(model)
    before = sum(p.numel() for p in model.parameters())
    removed_heads: list[list[int]] = []
    for layer in layers:
        count = layer.attention.self.num_attention_heads
        kept = _keep_top(head_importance(layer), heads) if heads else torch.arange(count)
        removed_heads.append(sorted(set(range(count)) - set(kept.tolist())))
        if heads:
            keep_heads(layer, kept)
        if ffn:
            keep_neurons(layer, _keep_top(neuron_importance(layer), ffn))
    after = sum(p.numel() for p in model.parameters())
    return {
        "heads": heads,
        "ffn": ffn,
        "importance": "weight magnitude",
        "removedHeads": removed_heads,
        "parametersBefore": before,
        "parametersAfter": after,
        "structure": structure_of(model),
    }
