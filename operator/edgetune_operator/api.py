"""The `FineTuneJob` API (edgetune.dev/v1alpha1): spec and status models, the single source of truth.

The trainer-side sections (model, dataset, training, storage, checkpoint, export) come from
`edgetune_trainer.config`; this module adds what only a cluster needs (resources, runPolicy),
the status the operator writes, and the whole-document model used by `edgetune validate`.
The CRD in `crds/` is generated from these models by `edgetune_operator.crdgen`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgetune_trainer.config import (
    ApiModel,
    CheckpointSpec,
    DatasetSpec,
    ExportList,
    Loc,
    ModelSpec,
    ScalingSpec,
    StorageSpec,
    Toleration,
    TrainingSpec,
    TrainJobConfig,
    cross_section_problems,
    known_field_names,
    raise_problems,
)
from edgetune_trainer.problems import ConfigError, Problem, from_validation_error, show_input
from edgetune_trainer.rules import DnsLabel, NodeSelector, Quantity, check_label_value, schema_only

GROUP = "edgetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"

_IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
LabelValue = Annotated[str, schema_only(maxLength=63), AfterValidator(check_label_value)]


def _image(value: str) -> str:
    if not re.match(_IMAGE, value):
        raise ValueError(f"must be a container image reference such as registry/trainer:1.0 (got {show_input(value)})")
    return value


Image = Annotated[str, schema_only(pattern=_IMAGE, maxLength=512), AfterValidator(_image)]


class ResourcesSpec(ScalingSpec):
    """Ray Train workers (inherited from the trainer's scaling) plus where and how their pods run."""

    memory_per_worker: Quantity = Field(default="4Gi", description="Memory per worker pod")
    node_selector: NodeSelector = Field(default_factory=dict, description="Node labels the worker pods require")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    image: Image | None = Field(default=None, description="Trainer image; unset: the operator's default")


class RunPolicy(ApiModel):
    """Retries, deadlines, clean-up and queueing."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Failed attempts retried (each resumes from the latest checkpoint)",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=31_536_000, description="Fail the job after this long, all attempts included"
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Delete the Ray cluster this long after an attempt ends",
    )
    suspend: bool = Field(default=False, description="Stop (or hold) the job; resume by setting false")
    queue_name: LabelValue | None = Field(
        default=None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)"
    )


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, how, where, and what to export."""

    model: ModelSpec
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    export: ExportList
    run_policy: RunPolicy = Field(default_factory=RunPolicy)

    @model_validator(mode="after")
    def _cross_section(self) -> FineTuneJobSpec:
        problems: list[tuple[Loc, str]] = cross_section_problems(
            self.model, self.training, self.resources.gpus_per_worker, self.export, ("resources",)
        )
        raise_problems(problems)
        return self


# --- status ----------------------------------------------------------------------------------

Phase = Literal["Pending", "Launching", "Running", "Distilling", "Exporting", "Succeeded", "Failed", "Suspended"]
ConditionType = Literal["Validated", "Launched", "Training", "Distilled", "Exported", "Succeeded", "Failed"]


class StatusModel(BaseModel):
    """Status is written by the operator, so it is read leniently (unknown fields ignored)."""

    model_config = ConfigDict(ApiModel.model_config, extra="ignore", strict=False, frozen=False)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(StatusModel):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024, description="CamelCase reason code")
    message: str = Field(default="", max_length=32_768, description="Human-readable detail")
    last_transition_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class Progress(StatusModel):
    epoch: int = Field(default=0, ge=0)
    step: int = Field(default=0, ge=0, description="Optimizer steps done")
    total_steps: int = Field(default=0, ge=0)
    percent: int = Field(default=0, ge=0, le=100, description="step / totalSteps, in percent")
    loss: float | None = None
    eval_metric: float | None = Field(default=None, description="Latest eval accuracy (0-1)")
    samples_per_second: float | None = None


class ExportCandidateStatus(StatusModel):
    """One model an export target with distill tried: the teacher, the student, the student in int8."""

    name: str = Field(description="teacher-int8 | student | student-int8 (teacher, teacher-fp16 by quantize)")
    phase: Literal["Succeeded", "Failed"] = Field(description="Succeeded: it met every budget")
    size_bytes: int | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, description="p95 latency, onnxruntime CPU, batch 1")
    accuracy: float | None = Field(default=None, description="Accuracy on the eval examples")
    accuracy_drop: float | None = Field(default=None, description="Points below the teacher's torch accuracy")


class ExportStatus(StatusModel):
    name: str
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    uri: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, description="p95 latency, onnxruntime CPU, batch 1")
    accuracy_drop: float | None = Field(default=None, description="Eval-metric drop in percentage points")
    missed_budgets: list[Literal["maxSizeMB", "maxLatencyMs", "maxAccuracyDrop"]] | None = Field(
        default=None, max_length=3, description="The budgets this export missed (unset: it met them all)"
    )
    candidate: str | None = Field(default=None, description="With distill: the candidate published")
    candidates: list[ExportCandidateStatus] | None = Field(
        default=None, max_length=8, description="With distill: every candidate tried, with its figures"
    )
    message: str | None = None


class FineTuneJobStatus(StatusModel):
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    attempt: int = Field(default=0, ge=0, description="Current attempt, 1-based; 0 before launch")
    ray_job_name: str | None = None
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    progress: Progress | None = None
    latest_checkpoint: str | None = None
    exports: list[ExportStatus] = Field(default_factory=list)
    observed_generation: int | None = Field(default=None, ge=0)


# --- the whole document ----------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The parts of metadata that validation cares about; everything else passes through."""

    model_config = ConfigDict(extra="allow")

    name: DnsLabel
    namespace: DnsLabel | None = None


class FineTuneJob(BaseModel):
    model_config = ConfigDict(ApiModel.model_config, frozen=False)

    api_version: Literal["edgetune.dev/v1alpha1"]
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None


def to_trainer_config(spec: FineTuneJobSpec, name: str, namespace: str) -> TrainJobConfig:
    """The trainer's config for a job: the trainer-side sections plus the scaling part of resources."""
    scaling = ScalingSpec(
        workers=spec.resources.workers,
        gpus_per_worker=spec.resources.gpus_per_worker,
        cpus_per_worker=spec.resources.cpus_per_worker,
    )
    return TrainJobConfig(
        name=name,
        namespace=namespace,
        model=spec.model,
        dataset=spec.dataset,
        training=spec.training,
        scaling=scaling,
        storage=spec.storage,
        checkpoint=spec.checkpoint,
        export=spec.export,
    )


_KNOWN_FIELDS = known_field_names(FineTuneJob)


def spec_problems(spec: Any, path: Loc = ("spec",)) -> list[Problem]:
    """Every problem in a FineTuneJob spec (as found in a cluster object), or [] when it is valid."""
    try:
        FineTuneJobSpec.model_validate(spec, by_alias=True, by_name=False)
    except ValidationError as err:
        return from_validation_error(err, prefix=path, known_fields=_KNOWN_FIELDS)
    return []


def document_problems(document: Any) -> list[Problem]:
    """Every problem in a whole FineTuneJob document (apiVersion, kind, metadata, spec)."""
    if not isinstance(document, dict):
        return [Problem("", f"a FineTuneJob must be a YAML mapping, not {type(document).__name__}")]
    try:
        FineTuneJob.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as err:
        return from_validation_error(err, known_fields=_KNOWN_FIELDS)
    return []


def parse_job(document: Any) -> FineTuneJob:
    """A validated FineTuneJob, or ConfigError listing every problem."""
    problems = document_problems(document)
    if problems:
        name = document.get("metadata", {}).get("name") if isinstance(document, dict) else None
        what = f"FineTuneJob {show_input(name)}" if isinstance(name, str) else "FineTuneJob"
        raise ConfigError(what, problems)
    return FineTuneJob.model_validate(document, by_alias=True, by_name=False)
