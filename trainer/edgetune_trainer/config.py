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

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from edgetune_trainer.problems import MULTI_PROBLEM_TYPE, ConfigError, from_validation_error, show_input
from edgetune_trainer.rules import (
    DNS_LABEL_SCHEMA,
    DataSource,
    DnsLabel,
    FieldName,
    ModelSource,
    NodeSelector,
    Precision,
    Quantity,
    Task,
    check_dns_label,
    check_endpoint,
    check_freeze,
    check_label_key,
    check_storage_uri,
    schema_only,
)

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
    freeze: Annotated[
        str, schema_only(pattern=r"^(none|backbone|layers:[1-9][0-9]*)$"), AfterValidator(check_freeze)
    ] = Field(
        default="none",
        description="none (train all), backbone (head only) or layers:N (head + top N blocks)",
    )
    pretrained: bool = Field(
        default=True,
        description=(
            "false: the source's architecture and tokenizer with random weights instead of its trained ones "
            "(a from-scratch baseline, to measure what pretraining buys)"
        ),
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
        weights = self.source.partition("@")[2]
        if not self.pretrained and self.source.startswith("torchvision://") and weights not in ("", "none"):
            problems.append(
                (("pretrained",), f"is false but the source names weights (@{weights}); keep one of the two")
            )
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

    uri: Annotated[str, Field(max_length=1024), AfterValidator(check_storage_uri)] | None = Field(
        default=None, description="s3://BUCKET/prefix; the job writes under <prefix>/<namespace>/<name>/"
    )
    endpoint: Annotated[str, Field(max_length=512), AfterValidator(check_endpoint)] | None = Field(
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
                check_label_key(self.key)
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


class StudentSpec(ApiModel):
    """The smaller model a distillation trains: a cut of the teacher, or a named model."""

    layers: int | None = Field(
        default=None,
        ge=1,
        le=96,
        description=(
            "Keep this many of the teacher's transformer layers (evenly spaced, weights copied); text models only"
        ),
    )
    hidden_size: int | None = Field(
        default=None,
        ge=16,
        le=8192,
        description=(
            "A narrower student of the teacher's architecture, trained from random weights (the teacher's weights "
            "do not fit it); text models only"
        ),
    )
    embedding_rank: int | None = Field(
        default=None,
        ge=4,
        le=4096,
        description=(
            "Store the word embeddings as two factors of this rank (the truncated SVD of the teacher's table): "
            "for small students whose size is mostly the vocabulary; text models only"
        ),
    )
    source: ModelSource | None = Field(
        default=None,
        description="A named smaller model (hf://, torchvision://, s3:// or a path) with a new head, instead of a cut",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> StudentSpec:
        problems: list[tuple[Loc, str]] = []
        if self.source is not None and (self.layers, self.hidden_size, self.embedding_rank) != (None, None, None):
            message = "name a student source or a cut of the teacher (layers, hiddenSize, embeddingRank), not both"
            problems.append((("source",), message))
        if self.embedding_rank is not None and self.hidden_size is not None:
            problems.append(
                (("embeddingRank",), "factorizes the teacher's embeddings, which a hiddenSize student lacks")
            )
        raise_problems(problems)
        return self


class PruneSpec(ApiModel):
    """Structured pruning: whole attention heads and feed-forward neurons removed, by importance."""

    heads: float = Field(
        default=0.0, ge=0.0, le=0.9, description="Share of attention heads removed in every layer (0 to 0.9)"
    )
    ffn: float = Field(
        default=0.0, ge=0.0, le=0.9, description="Share of feed-forward neurons removed in every layer (0 to 0.9)"
    )

    @model_validator(mode="after")
    def _prunes_something(self) -> PruneSpec:
        if self.heads == 0.0 and self.ffn == 0.0:
            raise_problems([(("heads",), "prune removes nothing: set heads or ffn above 0")])
        return self


class AugmentSpec(ApiModel):
    """A swapped copy of every training batch for the teacher to label: words replaced by their nearest
    neighbours in the teacher's vocabulary embedding (text models)."""

    probability: float = Field(default=0.3, ge=0.05, le=1.0, description="Chance that each whole word is swapped")
    neighbours: int = Field(default=10, ge=1, le=100, description="Candidates per word, nearest by cosine similarity")


class DistillSpec(ApiModel):
    """Knowledge distillation: a student trained on the job's data against the fine-tuned teacher's logits
    (loss = softTargetWeight * T^2 * KL(teacher/T || student/T) + (1 - softTargetWeight) * cross-entropy)."""

    student: StudentSpec = Field(
        default_factory=StudentSpec, description="The student (default: the teacher's own shape, for pruning alone)"
    )
    prune: PruneSpec | None = Field(
        default=None, description="Structured pruning of the student before its training (the recovery fine-tune)"
    )
    temperature: float = Field(default=2.0, ge=0.5, le=20.0, description="Softmax temperature T of the soft targets")
    soft_target_weight: float = Field(
        default=0.7, ge=0.0, le=1.0, description="Weight of the soft-target loss; the rest goes to the labels"
    )
    hidden_weight: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        description=(
            "Weight of matching each student layer's output to that of the teacher layer it was cut from (mean "
            "squared error over the tokens); default 1 for cuts of the teacher, 0 for other students"
        ),
    )
    augment: AugmentSpec | None = Field(
        default=None,
        description=(
            "Also distil on a copy of each batch with words swapped for their neighbours (soft targets only): "
            "the student sees words the training data lacks"
        ),
    )
    epochs: int = Field(default=3, ge=0, le=10_000, description="Passes over the training data (0: stop by maxSteps)")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description="Stop after this many optimizer steps")
    learning_rate: float = Field(default=1e-4, gt=0.0, le=10.0, description="Peak learning rate of the student")

    @model_validator(mode="after")
    def _shape(self) -> DistillSpec:
        problems: list[tuple[Loc, str]] = []
        if self.epochs == 0 and self.max_steps is None:
            problems.append((("epochs",), "is 0: set maxSteps"))
        student = self.student
        cut = (student.layers, student.hidden_size, student.embedding_rank) != (None, None, None)
        if student.source is None and not cut and self.prune is None:
            problems.append(
                (
                    ("student",),
                    "names no smaller model: set student.layers, hiddenSize, embeddingRank or source, or prune",
                )
            )
        if self.hidden_weight and (student.source is not None or student.hidden_size is not None):
            problems.append(
                (("hiddenWeight",), "matches layers of a cut of the teacher: a hiddenSize or named student has none")
            )
        if student.source is not None and self.prune is not None:
            problems.append((("prune",), "applies to a cut of the teacher, not to a named student source"))
        raise_problems(problems)
        return self


class ExportTarget(ApiModel):
    """One edge artifact to build after training."""

    name: Annotated[
        str,
        schema_only(maxLength=40, pattern=DNS_LABEL_SCHEMA),
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
    distill: DistillSpec | None = Field(
        default=None,
        description=(
            "Also train a smaller student (and prune it) in a RayJob of its own; the export then tries the teacher, "
            "the student and the student in int8, and publishes the smallest that meets the budgets"
        ),
    )

    @model_validator(mode="after")
    def _quantize_needs_onnx(self) -> ExportTarget:
        if self.format == "torchscript" and self.quantize != "none":
            raise_problems([(("quantize",), f"quantize: {self.quantize} needs format: onnx")])
        if self.format == "torchscript" and self.distill is not None:
            raise_problems([(("distill",), "needs format: onnx (its candidates include an int8 student)")])
        return self


ExportList = Annotated[list[ExportTarget], Field(default_factory=list, max_length=16)]


def cross_section_problems(
    model: ModelSpec, training: TrainingSpec, gpus_per_worker: int, exports: list[ExportTarget], scaling_path: Loc
) -> list[tuple[Loc, str]]:
    """Rules that span sections; shared by the trainer config and the FineTuneJob spec."""
    problems: list[tuple[Loc, str]] = []
    for index, target in enumerate(exports):
        problems.extend(distill_problems(model, target.distill, ("export", index, "distill")))
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


def distill_problems(model: ModelSpec, distill: DistillSpec | None, path: Loc) -> list[tuple[Loc, str]]:
    """A distillation's student must fit the job's task: cuts and pruning work on transformer encoders."""
    if distill is None:
        return []
    problems: list[tuple[Loc, str]] = []
    text = model.task == "text-classification"
    student = distill.student
    if not text:
        for name, value in (
            ("layers", student.layers),
            ("hiddenSize", student.hidden_size),
            ("embeddingRank", student.embedding_rank),
        ):
            if value is not None:
                problems.append(
                    (
                        (*path, "student", name),
                        "cuts a transformer encoder: for image-classification name a smaller model in student.source "
                        "(for example torchvision://mobilenet_v3_small)",
                    )
                )
        if distill.prune is not None:
            problems.append(((*path, "prune"), "prunes attention heads and feed-forward neurons: text models only"))
        if distill.augment is not None:
            problems.append(((*path, "augment"), "swaps words: text models only"))
    source = student.source or ""
    if source.startswith("torchvision://") and text:
        problems.append(((*path, "student", "source"), "is an image model, but the job's task is text-classification"))
    if source.startswith("hf://") and not text:
        problems.append(((*path, "student", "source"), "is a text model, but the job's task is image-classification"))
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
        raise_problems(
            cross_section_problems(self.model, self.training, self.scaling.gpus_per_worker, self.export, ("scaling",))
        )
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
