"""The shape of a compressed student, which its transformers config no longer describes.

    structure_of(model)              heads and neurons per layer, and the embedding rank when factorized
    apply_structure(model, shape)    give a model freshly built from its config those shapes
    factorize_embeddings(model, r)   store the word embeddings as two factors of rank r

A pruned layer has fewer heads than `num_attention_heads` says, and a factorized vocabulary table is two
tensors where the config expects one. So a student's artifact header carries `structure`, and loading
builds the model from its config, reshapes it with `apply_structure` and only then reads the weights,
strictly (model/loading.py): a mismatch raises, where `from_pretrained` would re-initialise it.

Why factorize: in a small encoder the vocabulary table is most of the model. all-MiniLM-L6-v2 holds
30,522 x 384 = 11.7 M of its 22.7 M parameters there, so cutting it to 2 layers leaves 15.6 M, still
two thirds of the size. A rank-r factorisation (the truncated SVD of the teacher's table: 30,522 x r,
then r x 384) keeps the directions that carry most of the table's energy, including the rows of words
the job's training data never shows, at r/384 of the size; the distillation then tunes both factors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetune_trainer.model.loading import ModelLoadError


class FactorizedEmbedding(nn.Module):
    """A vocabulary table as (vocab x rank) rows projected by (rank x hidden): Gather then MatMul in ONNX."""

    def __init__(self, vocab: int, rank: int, hidden: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.rows = nn.Embedding(vocab, rank, padding_idx=padding_idx)
        self.project = nn.Linear(rank, hidden, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.rows(ids))

    @property
    def rank(self) -> int:
        return self.rows.embedding_dim


def _embeddings(model: nn.Module) -> nn.Module:
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    embeddings = getattr(base, "embeddings", None)
    if embeddings is None or not isinstance(
        getattr(embeddings, "word_embeddings", None), nn.Embedding | FactorizedEmbedding
    ):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ModelLoadError(f"{kind} has no embeddings.word_embeddings table to factorize: drop student.embeddingRank")
    return embeddings


def factorize_embeddings(model: nn.Module, rank: int) -> dict[str, Any]:
    """Replace the word embeddings by their rank-`rank` truncated SVD; what it kept, in a record."""
    embeddings = _embeddings(model)
    table = embeddings.word_embeddings
    if not isinstance(table, nn.Embedding):
        raise ModelLoadError("the word embeddings are already factorized")
    vocab, hidden = table.weight.shape
    if rank >= hidden:
        raise ModelLoadError(
            f"distill.student.embeddingRank {rank} must be below the hidden size ({hidden}) to make the table smaller"
        )
    with torch.no_grad():
        left, singular, right = torch.linalg.svd(table.weight.detach().float(), full_matrices=False)
        factorized = FactorizedEmbedding(vocab, rank, hidden, table.padding_idx)
        factorized.rows.weight.copy_(left[:, :rank] * singular[:rank])
        factorized.project.weight.copy_(right[:rank].T)
    embeddings.word_embeddings = factorized
    energy = float((singular[:rank] ** 2).sum() / (singular**2).sum())
    return {
        "rank": rank,
        "energyKept": round(energy, 4),
        "parametersBefore": vocab * hidden,
        "parametersAfter": vocab * rank + rank * hidden,
    }


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a BERT-style encoder (BERT, RoBERTa, ELECTRA, MiniLM, ...)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not all(_is_bert_layer(layer) for layer in layers):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ModelLoadError(
            f"structured pruning supports BERT-style encoders (encoder.layer[i].attention.self, .intermediate, "
            f".output); {kind} is not one: drop distill.prune, or cut layers instead (student.layers)"
        )
    return list(layers)


def _is_bert_layer(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    return all(
        isinstance(module, nn.Linear)
        for module in (
            getattr(getattr(attention, "self", None), "value", None),
            getattr(getattr(attention, "output", None), "dense", None),
            getattr(getattr(layer, "intermediate", None), "dense", None),
            getattr(getattr(layer, "output", None), "dense", None),
        )
    )


def keep_heads(layer: nn.Module, heads: torch.Tensor) -> None:
    """Keep only `heads` of the layer's attention: Q, K, V rows and the output projection's columns."""
    attention = layer.attention.self  # type: ignore[union-attr]
    size = attention.attention_head_size
    rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads.tolist()])
    for name in ("query", "key", "value"):
        setattr(attention, name, _prune_linear(getattr(attention, name), rows, 0))
    output = layer.attention.output  # type: ignore[union-attr]
    output.dense = _prune_linear(output.dense, rows, 1)
    attention.num_attention_heads = len(heads)
    attention.all_head_size = len(rows)


def keep_neurons(layer: nn.Module, neurons: torch.Tensor) -> None:
    """Keep only `neurons` of the layer's feed-forward block."""
    layer.intermediate.dense = _prune_linear(layer.intermediate.dense, neurons, 0)  # type: ignore[union-attr]
    layer.output.dense = _prune_linear(layer.output.dense, neurons, 1)  # type: ignore[union-attr]


def _prune_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    from transformers.pytorch_utils import prune_linear_layer

    return prune_linear_layer(linear, index.to(torch.long), dim=dim)


def structure_of(model: nn.Module) -> dict[str, Any]:
    """Heads and feed-forward neurons of each layer, and the embedding rank when factorized."""
    structure: dict[str, Any] = {
        "layers": [
            {"heads": layer.attention.self.num_attention_heads, "ffn": layer.intermediate.dense.out_features}
            for layer in encoder_layers(model)
        ]
    }
    table = _embeddings(model).word_embeddings
    if isinstance(table, FactorizedEmbedding):
        structure["embeddingRank"] = table.rank
    return structure


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> None:
    """Shrink a model built from its config to the shapes in `structure` (the weights are loaded next, so
    which rows go does not matter, only how many stay)."""
    layers = encoder_layers(model)
    wanted = structure["layers"]
    if len(wanted) != len(layers):
        raise ModelLoadError(f"the recorded structure has {len(wanted)} layers, the model {len(layers)}")
    for layer, shape in zip(layers, wanted, strict=True):
        if shape["heads"] != layer.attention.self.num_attention_heads:
            keep_heads(layer, torch.arange(shape["heads"]))
        if shape["ffn"] != layer.intermediate.dense.out_features:
            keep_neurons(layer, torch.arange(shape["ffn"]))
    rank = structure.get("embeddingRank")
    if rank is not None:
        embeddings = _embeddings(model)
        table = embeddings.word_embeddings
        vocab, hidden = table.weight.shape
        embeddings.word_embeddings = FactorizedEmbedding(vocab, rank, hidden, table.padding_idx)
