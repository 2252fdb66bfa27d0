"""Examples for training and evaluation: read, split, shard per rank, encode.

Sources: JSONL / CSV / Parquet files and image folders (one sub-folder per class), local or on
S3-compatible storage, and Hugging Face hub datasets (`hf://NAME[:SPLIT]`).

Sharding: the held-out split is drawn from one seeded permutation that every rank computes alike;
rank r then keeps examples r, r+W, r+2W, ... Text rows are read column-wise (only the two fields
needed) and each rank keeps its 1/W; image files are listed by every rank but each rank downloads
and decodes only its own. Train shards are cut to equal length so every rank runs the same number of
steps (DDP needs that); at most W-1 examples are left out per epoch.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import torch
from torch.utils.data import Dataset

from edgetune_trainer.config import DatasetSpec, StorageSpec, TrainJobConfig
from edgetune_trainer.model.artifact import Preprocessing
from edgetune_trainer.rules import parse_s3_uri
from edgetune_trainer.storage.filesystem import make_filesystem, read_whole

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TABLE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}


class DataError(ValueError):
    """The dataset cannot be used as configured; the message names the source and the fix."""


@dataclass(frozen=True)
class ImageRef:
    """An image file not yet downloaded: fetched by the rank that owns it."""

    filesystem: pafs.FileSystem
    path: str

    def load(self) -> Any:
        from PIL import Image

        return Image.open(io.BytesIO(read_whole(self.filesystem, self.path))).convert("RGB")


@dataclass
class Examples:
    """Raw inputs (text, ImageRef or PIL image) and integer labels, aligned."""

    inputs: list[Any] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: Sequence[int]) -> Examples:
        return Examples([self.inputs[i] for i in indices], [self.labels[i] for i in indices])


def locate(source: str, storage: StorageSpec, base_dir: Path | None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a non-hub source (s3://, file:// or a path relative to base_dir)."""
    if source.startswith("s3://"):
        bucket, key = parse_s3_uri(source)
        return make_filesystem(storage), f"{bucket}/{key}".rstrip("/")
    path = Path(source[len("file://") :] if source.startswith("file://") else source)
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return pafs.LocalFileSystem(), str(path.resolve())


def _label_id(value: Any, names: list[str], source: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{source}: label {value!r} is a boolean; use a class id or a class name")
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, str) and value.isdigit() and int(value) < len(names):
        return int(value)
    raise DataError(f"{source}: label {value!r} is not a class id 0..{len(names) - 1} nor one of {names[:10]}")


def _read_table(filesystem: pafs.FileSystem, path: str, columns: list[str], source: str) -> pa.Table:
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{source}: unsupported file type {suffix!r}; use .jsonl, .csv, .parquet or an image folder")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            schema_names = pq.read_schema(path, filesystem=filesystem).names
            _check_columns(schema_names, columns, source)
            return pq.read_table(path, filesystem=filesystem, columns=columns)
        data = read_whole(filesystem, path)
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(io.BytesIO(data))
        else:
            import pyarrow.json as pjson

            table = pjson.read_json(io.BytesIO(data))
    except FileNotFoundError as err:
        raise DataError(f"{source}: file not found") from err
    except pa.ArrowInvalid as err:
        raise DataError(f"{source}: cannot parse: {err}") from err
    _check_columns(table.column_names, columns, source)
    return table.select(columns)


def _check_columns(present: list[str], wanted: list[str], source: str) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise DataError(
            f"{source}: field {missing[0]!r} not found; the data has {present[:20]} "
            "(set dataset.textField / labelField / imageField)"
        )


def _read_image_folder(filesystem: pafs.FileSystem, path: str, names: list[str], source: str) -> Examples:
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    files = sorted(
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and Path(info.path).suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DataError(f"{source}: no images found (expected one sub-folder per class holding .png/.jpg files)")
    folders = sorted({Path(f).parent.name for f in files})
    default_names = names == [str(i) for i in range(len(names))]
    if default_names:  # no label names given: classes are the sorted folder names
        if len(folders) != len(names):
            raise DataError(f"{source}: {len(folders)} class folders {folders[:10]} but numLabels is {len(names)}")
        names = folders
    examples = Examples()
    for file in files:
        examples.inputs.append(ImageRef(filesystem, file))
        examples.labels.append(_label_id(Path(file).parent.name, names, source))
    return examples


def _read_hub(source: str, spec: DatasetSpec, names: list[str], image: bool) -> Examples:
    import datasets

    name, _, split = source[len("hf://") :].partition(":")
    try:
        table = datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        raise DataError(
            f"cannot load hub dataset {source!r}: {str(err).splitlines()[0]} "
            "(without network access, use a JSONL/CSV/Parquet file or an image folder, local or s3://)"
        ) from err
    input_field = spec.image_field if image else spec.text_field
    _check_columns(table.column_names, [input_field, spec.label_field], source)
    return Examples(list(table[input_field]), [_label_id(v, names, source) for v in table[spec.label_field]])


def read_examples(source: str, config: TrainJobConfig, base_dir: Path | None) -> Examples:
    """Every example of one source, as raw inputs (images stay on storage as ImageRef)."""
    spec, names = config.dataset, config.model.label_names()
    image = config.model.task == "image-classification"
    if source.startswith("hf://"):
        return _read_hub(source, spec, names, image)
    filesystem, path = locate(source, config.storage, base_dir)
    try:
        info = filesystem.get_file_info(path)
    except OSError as err:
        raise DataError(f"{source}: cannot reach it: {err}") from err
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{source}: not found ({path})")
    if image and info.type == pafs.FileType.Directory:
        return _read_image_folder(filesystem, path, names, source)
    if info.type == pafs.FileType.Directory:
        raise DataError(f"{source}: is a folder; text data must be a .jsonl, .csv or .parquet file")
    table = _read_table(filesystem, path, [spec.text_field, spec.label_field], source)
    return Examples(
        table.column(spec.text_field).to_pylist(),
        [_label_id(v, names, source) for v in table.column(spec.label_field).to_pylist()],
    )


@dataclass
class Split:
    train: Examples
    eval: Examples


def split_examples(config: TrainJobConfig, base_dir: Path | None) -> Split:
    """The train and eval examples of the whole job (before sharding), identical on every rank."""
    spec = config.dataset
    everything = read_examples(spec.source, config, base_dir)
    order = list(range(len(everything)))
    random.Random(config.training.seed).shuffle(order)
    if spec.eval_source is not None:
        eval_examples = read_examples(spec.eval_source, config, base_dir)
        train_order = order
    else:
        held_out = round(len(order) * spec.holdout_fraction)
        if spec.holdout_fraction > 0 and len(order) >= 2:
            held_out = max(held_out, 1)
        eval_examples = everything.take(order[:held_out])
        train_order = order[held_out:]
    if spec.max_samples is not None:
        train_order = train_order[: spec.max_samples]
    if not train_order:
        raise DataError(f"{spec.source}: no training examples left after the validation split")
    return Split(everything.take(train_order), eval_examples)


def shard(examples: Examples, rank: int, world: int, equal: bool) -> Examples:
    """Rank `rank`'s 1/world of the examples; `equal` cuts every shard to the same length."""
    count = len(examples)
    if equal:
        if count < world:
            raise DataError(f"only {count} training examples for {world} workers: each worker needs at least one")
        count = count - count % world
    return examples.take(range(rank, count, world))


class EncodedText(Dataset):
    """A shard of text examples, tokenized once up front (fixed length, so batches stack)."""

    def __init__(self, examples: Examples, tokenizer: Any, max_length: int) -> None:
        from edgetune_trainer.model.preprocess import encode_texts

        texts = [str(t) for t in examples.inputs]
        self.features = encode_texts(tokenizer, texts, max_length) if texts else {}
        self.labels = torch.tensor(examples.labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**{k: v[index] for k, v in self.features.items()}, "labels": self.labels[index]}


class EncodedImages(Dataset):
    """A shard of images, each downloaded on first use and kept (decoded) in memory."""

    def __init__(self, examples: Examples, prep: Preprocessing) -> None:
        from edgetune_trainer.model.preprocess import image_transform

        self.inputs = examples.inputs
        self.labels = torch.tensor(examples.labels, dtype=torch.long)
        self.transform = image_transform(prep)
        self.cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self.cache:
            item = self.inputs[index]
            self.cache[index] = item.load() if isinstance(item, ImageRef) else item
        return {"pixel_values": self.transform(self.cache[index]), "labels": self.labels[index]}


def preprocessing_for(config: TrainJobConfig) -> Preprocessing:
    if config.model.task == "text-classification":
        return Preprocessing("text", max_length=config.dataset.max_length)
    return Preprocessing("image", image_size=config.dataset.image_size)


def encode(examples: Examples, config: TrainJobConfig, tokenizer: Any) -> Dataset:
    prep = preprocessing_for(config)
    if prep.kind == "text":
        if tokenizer is None:
            raise DataError("a text model needs a tokenizer, and the model folder has none")
        return EncodedText(examples, tokenizer, int(prep.max_length or 128))
    return EncodedImages(examples, prep)


def load_eval_examples(config: TrainJobConfig, limit: int, base_dir: Path | None = None) -> list[tuple[Any, int]]:
    """Up to `limit` eval examples as (raw input, label) pairs, images loaded: for export checks."""
    held_out = split_examples(config, base_dir).eval
    pairs = []
    for item, label in list(zip(held_out.inputs, held_out.labels, strict=True))[:limit]:
        pairs.append((item.load() if isinstance(item, ImageRef) else item, label))
    return pairs
