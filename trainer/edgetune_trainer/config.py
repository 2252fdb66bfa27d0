"""The trainer's configuration: what to fine-tune, on what data, how, and where to keep it.

These models are the trainer-side half of the `FineTuneJob` API (the operator composes them with
its Kubernetes-only parts in `edgetune_operator.api`) and the whole of the trainer's own config
file (`edgetune-train --config`). They import nothing but pydantic, so the operator image can use
them without torch. Field names are snake_case in Python and camelCase in YAML, as Kubernetes does.

Field-level rules (types, ranges, enums, patterns) live in the field declarations so that they
reach the generated CRD and the API server enforces them too; rules that relate several fields
live in model validators and report every problem they find at once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from edgetune_trainer.problems import MULTI_PROBLEM_TYPE, ConfigError, from_validation_error, show_input

Loc = tuple[str | int, ...]


class ApiModel(BaseModel):
    """Base of every spec model: camelCase in YAML, unknown fields refused, no silent coercion.

    Strict mode keeps `edgetune validate` in step with the API server, which refuses `"2"` for an
    integer just as it refuses 2 for a string.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def raise_problems(problems: list[tuple[Loc, str]]) -> None:
    """Raise one pydantic error that carries several (location, message) problems."""
    if problems:
        summary = "; ".join(message for _, message in problems)
        raise PydanticCustomError(MULTI_PROBLEM_TYPE, "{summary}", {"summary": summary, "problems": problems})


# --- names, labels, URIs -------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_HF_SPLIT = re.compile(r"^[A-Za-z0-9_]+(\[[0-9:%-]*\])?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?$")


def check_dns_label(value: str, max_length: int = 63) -> str:
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters (got {len(value)})")
    if not _DNS_LABEL.match(value):
        raise ValueError(
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a "
            f"letter or digit (got {show_input(value)})"
        )
    return value


def _check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(_DNS_LABEL.match(p) for p in prefix.split("."))):
        raise ValueError(f"label key {show_input(key)} has an invalid prefix (must be a DNS subdomain)")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(f"label key {show_input(key)} is invalid (name part: 1-63 of A-Z a-z 0-9 - _ .)")
    return key


def check_label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_NAME.match(value):
        raise ValueError(
            f"label value {show_input(value)} is invalid (at most 63 of A-Z a-z 0-9 - _ ., alphanumeric ends)"
        )
    return value


def _check_node_selector(selector: dict[str, str]) -> dict[str, str]:
    for key, value in selector.items():
        _check_label_key(key)
        check_label_value(value)
    return selector


def check_object_key(key: str, what: str) -> str:
    """An object-store key or prefix: relative, no '.'/'..' segments, printable: keys stay under their prefix."""
    if key.startswith("/") or "\\" in key:
        raise ValueError(f"{what} must be a relative key with '/' separators (got {show_input(key)})")
    if any(not ch.isprintable() for ch in key):
        raise ValueError(f"{what} must not contain control characters")
    if any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"{what} must not contain '.' or '..' segments (got {show_input(key)})")
    return key


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b'), with the bucket name and key checked."""
    if not uri.startswith("s3://"):
        raise ValueError(f"must be an s3:// URI (got {show_input(uri)})")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI {show_input(uri)} has no bucket: write s3://BUCKET/prefix")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"s3 bucket {show_input(bucket)} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')"
        )
    return bucket, check_object_key(key.strip("/"), "the s3 key")


_MODEL_SCHEMES = ("hf://", "torchvision://", "s3://", "file://")
_DATA_SCHEMES = ("hf://", "s3://", "file://")


def _check_source(value: str, schemes: tuple[str, ...], what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"{what} must not contain control characters")
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value  # a local path: relative paths resolve against the job file's folder
    if f"{scheme}://" not in schemes:
        allowed = ", ".join(schemes)
        raise ValueError(f"{what} scheme '{scheme}://' is not supported; use {allowed} or a local path")
    if scheme == "s3":
        parse_s3_uri(value)
    elif scheme == "hf":
        name, _, split = rest.partition(":")
        name = name.split("@", 1)[0]
        if not _HF_ID.match(name) or (split and what == "model source"):
            form = "hf://[ORG/]NAME[@REVISION]" if what == "model source" else "hf://[ORG/]NAME[:SPLIT]"
            raise ValueError(f"{show_input(value)} is not a Hugging Face id: write {form}")
        if split and not _HF_SPLIT.match(split):
            raise ValueError(
                f"{show_input(value)}: split {show_input(split)} must look like train, test or train[:10%]"
            )
    elif scheme == "torchvision" and not _IDENTIFIER.match(rest.split("@", 1)[0]):
        raise ValueError(f"{show_input(value)} is not a torchvision model: write torchvision://resnet18[@WEIGHTS]")
    elif scheme == "file" and not rest.startswith("/"):
        raise ValueError(f"{show_input(value)} must be an absolute file:///path")
    return value


def _model_source(value: str) -> str:
    return _check_source(value, _MODEL_SCHEMES, "model source")


def _data_source(value: str) -> str:
    return _check_source(value, _DATA_SCHEMES, "dataset source")


def _storage_uri(value: str) -> str:
    if value.startswith("s3://"):
        parse_s3_uri(value)
        return value
    if value.startswith("file:///"):
        return value
    raise ValueError(f"must be s3://BUCKET/prefix (or file:///path for local runs); got {show_input(value)}")


def _endpoint(value: str) -> str:
    if not _ENDPOINT.match(value):
        raise ValueError(f"must be an http(s)://host[:port] URL (got {show_input(value)})")
    return value


def _freeze(value: str) -> str:
    if value in ("none", "backbone"):
        return value
    kind, _, count = value.partition(":")
    if kind == "layers" and count.isdigit() and int(count) >= 1:
        return value
    raise ValueError(
        f"must be 'none', 'backbone' or 'layers:N' with N >= 1 top blocks to train (got {show_input(value)})"
    )


def schema_only(**keywords: Any) -> Any:
    """Constraints for the generated CRD (the API server enforces them) that pydantic checks through a
    validator with a clearer message instead."""
    return Field(json_schema_extra=keywords)


_DNS_LABEL_SCHEMA = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, schema_only(maxLength=63, pattern=_DNS_LABEL_SCHEMA), AfterValidator(check_dns_label)]
NodeSelector = Annotated[dict[str, str], AfterValidator(_check_node_selector)]

# A Kubernetes quantity such as 512Mi, 16Gi, 500m or 1.5G (core/v1 resource.Quantity, binary and decimal SI).
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"


def _quantity(value: str) -> str:
    if not re.match(_QUANTITY, value):
        raise ValueError(f"must be a Kubernetes quantity such as 4Gi, 512Mi, 500m or 2 (got {show_input(value)})")
    return value


Quantity = Annotated[str, schema_only(pattern=_QUANTITY, maxLength=32), AfterValidator(_quantity)]
ModelSource = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_model_source)]
DataSource = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_data_source)]
FieldName = Annotated[str, Field(min_length=1, max_length=256)]

Task = Literal["text-classification", "image-classification"]
Precision = Literal["fp32", "bf16", "fp16"]


# --- the sections ----------------------------------------------------------------------------


class ModelSpec(ApiModel):
    """The model to fine-tune and the head to put on it."""

    source: ModelSource = Field(
        description=(
            "hf://NAME[@REV] (Hugging Face hub), torchvision://NAME[@WEIGHTS], s3://BUCKET/PATH, "
            "file:///PATH or a local path (a saved HF directory or a torch state dict)"
        )
    )
    task: Task = Field(description="What the new head predicts")
    num_labels: int = Field(ge=2, le=100_000, description="Number of classes of the new head")
    labels: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        max_length=100_000,
        description="Class names, in label-id order (default: 0..numLabels-1)",
    )
    freeze: Annotated[str, schema_only(pattern=r"^(none|backbone|layers:[1-9][0-9]*)$"), AfterValidator(_freeze)] = (
        Field(
            default="none",
            description="none (train all), backbone (head only) or layers:N (head + top N blocks)",
        )
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        problems: list[tuple[Loc, str]] = []
        if self.labels is not None and len(self.labels) != self.num_labels:
            problems.append((("labels",), f"has {len(self.labels)} names but numLabels is {self.num_labels}"))
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            problems.append((("labels",), "label names must be unique"))
        if self.source.startswith("torchvision://") and self.task != "image-classification":
            problems.append((("task",), "torchvision:// models need task: image-classification"))
        if self.source.startswith("hf://") and self.task != "text-classification":
            problems.append(
                (
                    ("task",),
                    "hf:// models are supported for text-classification; use torchvision:// for images",
                )
            )
        raise_problems(problems)
        return self

    def label_names(self) -> list[str]:
        return list(self.labels) if self.labels else [str(i) for i in range(self.num_labels)]


class DatasetSpec(ApiModel):
    """Where the examples come from and which fields hold input and label."""

    source: DataSource = Field(
        description=(
            "hf://[ORG/]NAME[:SPLIT] (hub dataset, default split train), s3://BUCKET/train.jsonl|.csv|.parquet, "
            "s3://BUCKET/imagefolder/ (one folder per class), or a local path"
        )
    )
    text_field: FieldName = Field(default="text", description="Input text column (text tasks)")
    label_field: FieldName = Field(default="label", description="Label column (integer id or class name)")
    image_field: FieldName = Field(default="image", description="Image column (hub image datasets)")
    eval_source: DataSource | None = Field(
        default=None,
        description="Separate evaluation data; when unset, validationFraction of source is held out",
    )
    validation_fraction: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Fraction held out for evaluation when evalSource is unset (default 0.1)",
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="Use at most this many training examples"
    )
    max_length: int = Field(default=128, ge=8, le=8192, description="Token sequence length (text tasks)")
    image_size: int = Field(default=224, ge=16, le=4096, description="Square input size in pixels (image tasks)")

    @model_validator(mode="after")
    def _one_eval_source(self) -> DatasetSpec:
        if self.eval_source is not None and self.validation_fraction is not None:
            raise_problems([(("validationFraction",), "set either evalSource or validationFraction, not both")])
        return self

    @property
    def holdout_fraction(self) -> float:
        """The fraction of `source` held out for evaluation (0 when a separate evalSource is given)."""
        if self.eval_source is not None:
            return 0.0
        return 0.1 if self.validation_fraction is None else self.validation_fraction


class TrainingSpec(ApiModel):
    """Optimisation settings."""

    epochs: int = Field(default=1, ge=0, le=10_000, description="Passes over the training data (0: stop by maxSteps)")
    max_steps: int = Field(
        default=0, ge=0, le=1_000_000_000, description="Stop after this many optimizer steps (0: no limit)"
    )
    batch_size_per_worker: int = Field(default=16, ge=1, le=65_536, description="Examples per worker per micro-batch")
    learning_rate: float = Field(default=5e-5, gt=0.0, le=10.0, description="Peak learning rate")
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="adamw, or sgd with momentum 0.9")
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Share of steps with linear warm-up, then linear decay"
    )
    gradient_accumulation: int = Field(default=1, ge=1, le=4096, description="Micro-batches per optimizer step")
    precision: Precision = Field(
        default="fp32", description="fp32, bf16 (CPU or GPU) or fp16 (GPU, with a grad scaler)"
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _has_an_end(self) -> TrainingSpec:
        if self.epochs == 0 and self.max_steps == 0:
            raise_problems([(("epochs",), "epochs and maxSteps are both 0: set at least one so training ends")])
        return self


class ScalingSpec(ApiModel):
    """How many Ray Train workers and what each one gets."""

    workers: int = Field(default=1, ge=1, le=1024, description="Ray Train workers (DDP ranks)")
    gpus_per_worker: int = Field(default=0, ge=0, le=16, description="GPUs per worker (0: CPU training)")
    cpus_per_worker: float = Field(default=1.0, gt=0.0, le=512.0, description="CPUs per worker")


class StorageSpec(ApiModel):
    """Object storage for checkpoints and exports; unset fields take the operator's defaults."""

    uri: Annotated[str, Field(max_length=1024), AfterValidator(_storage_uri)] | None = Field(
        default=None, description="s3://BUCKET/prefix; the job writes under <prefix>/<namespace>/<name>/"
    )
    endpoint: Annotated[str, Field(max_length=512), AfterValidator(_endpoint)] | None = Field(
        default=None, description="S3-compatible endpoint URL (MinIO, Ceph, ...); unset: AWS"
    )
    region: str = Field(default="us-east-1", min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    credentials_secret: DnsLabel | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, passed to pods as env references",
    )


class CheckpointSpec(ApiModel):
    """How often to checkpoint and how many to keep."""

    every_steps: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="Checkpoint every N optimizer steps"
    )
    every_epochs: int | None = Field(default=None, ge=1, le=10_000, description="Checkpoint every N epochs (default 1)")
    keep: int = Field(default=3, ge=1, le=100, description="Checkpoints kept in storage; older ones are deleted")

    @model_validator(mode="after")
    def _one_interval(self) -> CheckpointSpec:
        if self.every_steps is not None and self.every_epochs is not None:
            raise_problems([(("everySteps",), "set either everySteps or everyEpochs, not both")])
        return self


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1), for scheduling onto tainted GPU or edge nodes."""

    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        problems: list[tuple[Loc, str]] = []
        if self.key:
            try:
                _check_label_key(self.key)
            except ValueError as err:
                problems.append((("key",), str(err)))
        if self.operator == "Exists" and self.value:
            problems.append((("value",), "must be empty when operator is Exists"))
        if not self.key and self.operator != "Exists":
            problems.append((("operator",), "must be Exists when key is empty (tolerate every taint)"))
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            problems.append((("tolerationSeconds",), "only applies to effect NoExecute"))
        raise_problems(problems)
        return self


class ExportBudgets(ApiModel):
    """Limits an exported artifact must meet; a miss fails the export target."""

    max_size_mb: float | None = Field(
        default=None,
        alias="maxSizeMB",
        gt=0.0,
        le=1_000_000.0,
        description="Artifact size limit in MB (10^6 bytes)",
    )
    max_latency_ms: float | None = Field(
        default=None, gt=0.0, le=3_600_000.0, description="p95 latency limit, onnxruntime CPU, batch 1"
    )
    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        description="Allowed eval-metric drop vs the trained model, in percentage points",
    )


class ExportResources(ApiModel):
    """CPU and memory of the export Job's pod (requests = limits, so latency figures are stable)."""

    cpu: Quantity = Field(default="1", description="CPU for the export pod (also its latency measurement)")
    memory: Quantity = Field(default="2Gi", description="Memory for the export pod")


class ExportTarget(ApiModel):
    """One edge artifact to build after training."""

    name: Annotated[
        str,
        schema_only(maxLength=40, pattern=_DNS_LABEL_SCHEMA),
        AfterValidator(lambda v: check_dns_label(v, 40)),
    ] = Field(description="Target name (DNS label, at most 40 characters): exports/<name>/ in storage")
    format: Literal["onnx", "torchscript"] = "onnx"
    quantize: Literal["none", "int8", "fp16"] = "none"
    opset: int = Field(default=17, ge=13, le=23, description="ONNX opset")
    budgets: ExportBudgets = Field(default_factory=ExportBudgets)
    node_selector: NodeSelector = Field(default_factory=dict, description="Where the export Job runs (edge nodes)")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    backoff_limit: int = Field(default=1, ge=0, le=10, description="Export Job retries (batch/v1 backoffLimit)")
    resources: ExportResources = Field(default_factory=ExportResources)

    @model_validator(mode="after")
    def _quantize_needs_onnx(self) -> ExportTarget:
        if self.format == "torchscript" and self.quantize != "none":
            raise_problems([(("quantize",), f"quantize: {self.quantize} needs format: onnx")])
        return self


ExportList = Annotated[list[ExportTarget], Field(default_factory=list, max_length=16)]


def cross_section_problems(
    training: TrainingSpec, gpus_per_worker: int, exports: list[ExportTarget], scaling_path: Loc
) -> list[tuple[Loc, str]]:
    """Rules that span sections; shared by the trainer config and the FineTuneJob spec."""
    problems: list[tuple[Loc, str]] = []
    if training.precision == "fp16" and gpus_per_worker == 0:
        problems.append(
            (
                ("training", "precision"),
                f"fp16 needs GPUs ({'.'.join(map(str, scaling_path))}.gpusPerWorker is 0); use bf16 or fp32 on CPU",
            )
        )
    seen: set[str] = set()
    for index, target in enumerate(exports):
        if target.name in seen:
            problems.append((("export", index, "name"), f"duplicate export target name {show_input(target.name)}"))
        seen.add(target.name)
    return problems


class TrainJobConfig(ApiModel):
    """Everything `edgetune-train` and `edgetune-export` need: the trainer's whole config file."""

    name: DnsLabel = Field(description="Job name; storage path <uri>/<namespace>/<name>/")
    namespace: DnsLabel = Field(default="local", description="Namespace (or 'local'); part of the storage path")
    model: ModelSpec
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    export: ExportList

    @model_validator(mode="after")
    def _cross_section(self) -> TrainJobConfig:
        raise_problems(cross_section_problems(self.training, self.scaling.gpus_per_worker, self.export, ("scaling",)))
        if self.storage.uri is None:
            raise_problems([(("storage", "uri"), "is required in a trainer config")])
        return self


def known_field_names(*models: type[BaseModel]) -> list[str]:
    """Every camelCase field name of the given models and their nested models (for 'did you mean')."""
    names: set[str] = set()
    pending = list(models)
    seen: set[type[BaseModel]] = set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
            for arg in _model_args(info.annotation):
                pending.append(arg)
    return sorted(names)


def _model_args(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _model_args(arg)]


def load_train_config(data: Any) -> TrainJobConfig:
    """Validate a trainer config document; raise ConfigError listing every problem."""
    try:
        return TrainJobConfig.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as err:
        raise ConfigError(
            "trainer config", from_validation_error(err, known_fields=known_field_names(TrainJobConfig))
        ) from None
