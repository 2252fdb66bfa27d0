"""The trained model as a graph: ONNX (opset as asked, external data past a size threshold) or
TorchScript, with dynamic batch (and sequence) axes.

Why the TorchScript-based `torch.onnx.export(dynamo=False)` and not the dynamo exporter (torch 2.14's
default): measured here on BERT and ResNet, (1) the dynamo exporter implements opset 18 and up only; for
ResNet its down-conversion to the default opset 17 failed (onnx version converter: "axes_input_to_attribute
... No initializer or constant input") and it silently kept opset 18, so the `opset` field would not be
honoured; (2) it took ~3 s per tiny model against ~0.2 s; (3) its node names (node_MatMul_91) lose the
module scope the TorchScript exporter keeps (/model/bert/encoder/layer.3/output/dense/MatMul), which the
accuracy-aware int8 search reports as the layers kept in fp32. Both handle the dynamic batch and sequence
axes of BERT and the batch axis of ResNet with exact parity. `ExportOptions(exporter="dynamo")` remains
available for opset >= 18.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetune_trainer.export.inference import (
    OUTPUT,
    Feeds,
    ModelInputs,
)
from edgetune_trainer.export.quantize import (
    model_bytes,
)


def export_onnx(
    module: nn.Module, inputs: ModelInputs, sample: Feeds, path: Path, *, opset: int, exporter: str
) -> Path:
    """Write `module` as ONNX with a dynamic batch axis (and sequence axis for text) to `path`."""
    names = list(inputs.names)
    args = tuple(torch.from_numpy(sample[name]) for name in names)
    axes = {0: "batch", 1: "sequence"} if inputs.kind == "text" else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # Known and harmless here: the TorchScript exporter's deprecation notice, and tracer warnings on
        # transformers' mask helpers, whose traced branches do not depend on batch or sequence length
        # (parity at other shapes is tested).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        # The two exporters name the dynamic dimensions differently: axis names, or torch.export Dims.
        if exporter == "torchscript":
            shapes: dict[str, Any] = {
                "dynamic_axes": {**{name: axes for name in names}, OUTPUT: {0: "batch"}},
                "do_constant_folding": True,
                "dynamo": False,
            }
        else:
            dims = {index: torch.export.Dim(label, min=1) for index, label in axes.items()}
            shapes = {"dynamic_shapes": {name: dims for name in names}, "dynamo": True, "verbose": False}
        torch.onnx.export(
            module, args, str(path), input_names=names, output_names=[OUTPUT], opset_version=opset, **shapes
        )
    return path


def export_torchscript(module: nn.Module, inputs: ModelInputs, sample: Feeds, path: Path) -> Path:
    args = tuple(torch.from_numpy(sample[name]) for name in inputs.names)
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.14 marks TorchScript deprecated (FutureWarning) but it is the format the spec asks for
        # and it still traces and runs these models exactly (parity is checked after).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, args, check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def consolidate_external_data(path: Path) -> Path:
    """Put a model's external tensors into one `<name>.data` file next to it.

    The TorchScript exporter writes a model over 2 GiB as the graph plus one file per tensor; every later
    step (quantization, size accounting, publishing) expects the single-file `model.onnx.data` layout."""
    import onnx

    strays = [item for item in path.parent.iterdir() if item != path and item.name != path.name + ".data"]
    if not strays:
        return path
    model = onnx.load(str(path))  # reads the external tensors into memory
    for item in strays:
        if item.is_file():
            item.unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
    )
    return path


def save_onnx(source: Path, target: Path, threshold: int) -> list[Path]:
    """Copy a model to `target`, as one file, or with its weights in `<target>.data` when it is at least
    `threshold` bytes (protobuf cannot serialize one message over 2 GiB). Returns the files written."""
    import onnx

    external = model_bytes(source) >= threshold
    data_name = target.name + ".data"
    if not external and source.stat().st_size == model_bytes(source):
        # One self-contained file: a byte copy, so the published file is the very file that was evaluated.
        shutil.copyfile(source, target)
        return [target]
    model = onnx.load(str(source))  # also loads external data, whatever the file layout it came in
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=0,
    )
    return [target, target.parent / data_name] if external else [target]


def opset_of(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((item.version for item in model.opset_import if item.domain in ("", "ai.onnx")), None)
