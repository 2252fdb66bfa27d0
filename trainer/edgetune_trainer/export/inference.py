"""Run a classifier the same way everywhere: the torch model, an ONNX graph on onnxruntime, a TorchScript file.

The exporter's checks (parity, accuracy, latency), the benchmark and `edgetune predict` all go through
these helpers, so "the exported model agrees with torch" compares like with like: the same encoded
inputs (`model/preprocess.py`), the same batching, the same timing rules.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from edgetune_trainer.model.artifact import Preprocessing
from edgetune_trainer.model.preprocess import TEXT_INPUTS, encode_images, encode_texts

IMAGE_INPUT = "pixel_values"
OUTPUT = "logits"
Feeds = dict[str, np.ndarray]


# --- inputs ------------------------------------------------------------------------------------


@dataclass
class ModelInputs:
    """What the exported graph takes and how raw examples become those tensors."""

    prep: Preprocessing
    tokenizer: Any = None  # HF tokenizer for text models

    @property
    def kind(self) -> str:
        return self.prep.kind

    @property
    def names(self) -> tuple[str, ...]:
        return TEXT_INPUTS if self.kind == "text" else (IMAGE_INPUT,)

    def encode(self, raws: Sequence[Any]) -> Feeds:
        """Raw texts, or PIL images / image paths, to numpy feeds (int64 ids+mask, or float32 pixels)."""
        if self.kind == "text":
            encoded = encode_texts(self.tokenizer, [str(text) for text in raws], int(self.prep.max_length or 128))
            return {name: encoded[name].numpy().astype(np.int64) for name in TEXT_INPUTS}
        return {IMAGE_INPUT: encode_images([open_image(raw) for raw in raws], self.prep).numpy()}

    def signature(self, num_labels: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Input and output descriptions for the manifest (symbolic axes as strings)."""
        if self.kind == "text":
            inputs = [{"name": name, "dtype": "int64", "shape": ["batch", "sequence"]} for name in TEXT_INPUTS]
        else:
            size = int(self.prep.image_size or 224)
            inputs = [{"name": IMAGE_INPUT, "dtype": "float32", "shape": ["batch", 3, size, size]}]
        return inputs, [{"name": OUTPUT, "dtype": "float32", "shape": ["batch", num_labels]}]


def open_image(raw: Any) -> Any:
    """A PIL image from a PIL image, a path, or raw bytes."""
    from PIL import Image

    if isinstance(raw, Image.Image):
        return raw
    if isinstance(raw, bytes | bytearray):
        import io

        return Image.open(io.BytesIO(raw))
    return Image.open(Path(raw))


def slice_feeds(feeds: Feeds, start: int, stop: int) -> Feeds:
    return {name: array[start:stop] for name, array in feeds.items()}


def feed_count(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0])


# --- models as plain functions of the feeds ------------------------------------------------------


class TextLogits(nn.Module):
    """A Hugging Face sequence classifier as (input_ids, attention_mask) -> logits: the exported signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class ImageLogits(nn.Module):
    """A torchvision classifier as pixel_values -> logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def logits_module(model: nn.Module, kind: str) -> nn.Module:
    # The attribute is named `model`, so ONNX node names read /model/bert/encoder/layer.0/...: the
    # torch module path, which the manifest's list of layers kept in fp32 shows to people.
    wrapped = TextLogits(model) if kind == "text" else ImageLogits(model)
    return wrapped.eval()


class Runner(Protocol):
    """Feeds (numpy, batch first) -> logits (numpy [batch, labels])."""

    def __call__(self, feeds: Feeds) -> np.ndarray: ...


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Pin torch's intra-op threads for a measurement and restore them afterwards."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchRunner:
    """The eager torch model (or a TorchScript module) called with the exported signature."""

    def __init__(self, module: nn.Module | torch.jit.ScriptModule, threads: int | None = None) -> None:
        self.module = module
        self.threads = threads

    def __call__(self, feeds: Feeds) -> np.ndarray:
        tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in feeds.items()}
        with torch_threads(self.threads), torch.inference_mode():
            return self.module(**tensors).float().numpy()


class OrtRunner:
    """An onnxruntime CPU session; `threads` pins intra-op threads (0: onnxruntime's default, all cores)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph at a time: latency is the intra-op figure
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]

    def __call__(self, feeds: Feeds) -> np.ndarray:
        outputs = self.session.run([OUTPUT], {name: feeds[name] for name in self.input_names})
        return np.asarray(outputs[0], dtype=np.float32)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; it still runs
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return module


def batched_logits(runner: Runner, feeds: Feeds, batch_size: int = 32) -> np.ndarray:
    """Logits for every example, `batch_size` at a time (also exercises the dynamic batch axis)."""
    total = feed_count(feeds)
    parts = [runner(slice_feeds(feeds, start, start + batch_size)) for start in range(0, total, batch_size)]
    return np.concatenate(parts, axis=0)


# --- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Batch-1 latency over `runs` timed calls after `warmup` untimed ones, `threads` intra-op threads."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    runs: int
    warmup: int
    threads: int
    runtime: str
    batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50": round(self.p50_ms, 4),
            "p95": round(self.p95_ms, 4),
            "mean": round(self.mean_ms, 4),
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "runtime": self.runtime,
            "batchSize": self.batch_size,
        }


def measure_latency(
    call: Callable[[], Any], *, runs: int = 50, warmup: int = 5, threads: int, runtime: str
) -> LatencyStats:
    """Time `call`: warm-up calls first (allocations, lazy kernel selection) are not counted."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    values = np.asarray(times)
    return LatencyStats(
        p50_ms=float(np.percentile(values, 50)),
        p95_ms=float(np.percentile(values, 95)),
        mean_ms=float(values.mean()),
        runs=runs,
        warmup=warmup,
        threads=threads,
        runtime=runtime,
    )


@dataclass(frozen=True)
class ParityStats:
    """How closely one model's logits follow a reference's on the same inputs."""

    samples: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    label_agreement: float  # fraction of samples with the same argmax

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "maxAbsLogitDiff": float(f"{self.max_abs_logit_diff:.6g}"),
            "meanAbsLogitDiff": float(f"{self.mean_abs_logit_diff:.6g}"),
            "labelAgreement": round(self.label_agreement, 6),
        }


def parity(reference: np.ndarray, candidate: np.ndarray) -> ParityStats:
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agree = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))) if len(reference) else 1.0
    return ParityStats(
        samples=len(reference),
        max_abs_logit_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_logit_diff=float(diff.mean()) if diff.size else 0.0,
        label_agreement=agree,
    )


def accuracy(logits: np.ndarray, labels: Sequence[int]) -> float:
    return float(np.mean(logits.argmax(axis=1) == np.asarray(labels))) if len(labels) else 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
