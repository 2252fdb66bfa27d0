"""Knowledge distillation of an export target's student: a Ray Train run of its own, after training.

    run_distillation(config, target_name)   train the student of `export[target_name].distill`

The run is the job's training run with four things changed (`DistillWorker` overrides them):
- its storage area is `students/<target>/` (checkpoints/ and model/ there, kept and resumed exactly as the
  job's own: a killed worker costs at most one checkpoint interval);
- its model is the student (training/../model/student.py), and every rank also loads the teacher, the
  job's trained model artifact, frozen;
- its loss mixes the teacher's soft targets with the labels (Hinton et al., 2015):
  softTargetWeight * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - softTargetWeight) * CE,
  and for a cut of the teacher adds hiddenWeight * the mean squared error between each student layer's
  output and the output of the teacher layer it was cut from (as TinyBERT and Patient KD do): a signal per
  token and per dimension, where the logits give two numbers per example;
- its schedule (epochs, maxSteps, learningRate) is the distillation's, every layer trainable.

A student is tied to its teacher: `students/<target>/identity.json` records the teacher's header digest and
the distillation spec, and a run whose teacher or spec changed starts the student over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetune_trainer.config import DistillSpec, ExportTarget, TrainJobConfig
from edgetune_trainer.model.artifact import ARTIFACT_FILE, MODEL_KEY, student_key
from edgetune_trainer.model.augment import WordSwapper
from edgetune_trainer.model.loading import LoadedModel, ModelLoadError, load_artifact
from edgetune_trainer.model.structure import structure_of
from edgetune_trainer.model.student import build_student, student_problem
from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.storage.retry import RetryPolicy
from edgetune_trainer.training import checkpoint as ckpt
from edgetune_trainer.training.evaluate import forward, unwrap
from edgetune_trainer.training.loop import Worker, load_job_model, run_worker
from edgetune_trainer.training.progress import ProgressSink, log_sink
from edgetune_trainer.training.train import (
    PreparedRun,
    TrainingError,
    TrainResult,
    finished_run,
    launch_training,
    preflight,
)

log = logging.getLogger("edgetune.distill")

IDENTITY_FILE = "identity.json"


def distill_target(config: TrainJobConfig, name: str) -> tuple[ExportTarget, DistillSpec]:
    """The export target `name` and its distillation; ValueError naming the targets that have one."""
    for target in config.export:
        if target.name == name and target.distill is not None:
            return target, target.distill
    with_distill = [t.name for t in config.export if t.distill is not None]
    raise ValueError(f"no export target {name!r} with a distill section (those with one: {with_distill or 'none'})")


def student_config(config: TrainJobConfig, distill: DistillSpec) -> TrainJobConfig:
    """The job as its student trains: the distillation's schedule, and every layer trainable."""
    training = config.training.model_copy(
        update={"epochs": distill.epochs, "max_steps": distill.max_steps, "learning_rate": distill.learning_rate}
    )
    return config.model_copy(update={"training": training, "model": config.model.model_copy(update={"freeze": "none"})})


def hidden_weight_of(distill: DistillSpec) -> float:
    """The layer-matching weight in effect: as set, else 1 for a cut of the teacher (its layers have teacher
    layers to match) and 0 for a named or narrower student (they have none)."""
    if distill.student.source is not None or distill.student.hidden_size is not None:
        return 0.0
    return 1.0 if distill.hidden_weight is None else distill.hidden_weight


def teacher_digest(storage: JobStorage) -> str:
    """The sha256 of the teacher's artifact header, which lists the sha256 of every model file."""
    key = f"{MODEL_KEY}/{ARTIFACT_FILE}"
    if not storage.exists(key):
        raise TrainingError(
            f"no trained model at {storage.uri(MODEL_KEY)}: the job's training must finish before its distillation"
        )
    return hashlib.sha256(storage.read_bytes(key)).hexdigest()


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, weight: float
) -> torch.Tensor:
    """Soft targets (scaled by T^2, so their gradients keep their size as T changes) plus the labels. The
    labels cover the first rows only: rows after them (a batch's swapped copy) have soft targets alone."""
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / temperature, dim=-1),
        nn.functional.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = nn.functional.cross_entropy(student_logits[: len(labels)], labels)
    return weight * temperature**2 * soft + (1.0 - weight) * hard


def hidden_state_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], pairs: list[tuple[int, int]], mask: torch.Tensor
) -> torch.Tensor:
    """The mean squared difference of each (student layer, teacher layer) pair's outputs, over real tokens."""
    weights = mask.unsqueeze(-1).float()
    count = weights.sum() * student[0].shape[-1]
    total = sum((((student[s].float() - teacher[t].float()) ** 2) * weights).sum() / count for s, t in pairs)
    return total / len(pairs)  # type: ignore[return-value]


class DistillWorker(Worker):
    """One rank of a distillation: the student trains, the teacher only answers."""

    def __init__(self, loop_config: dict[str, Any]) -> None:
        self.target_name: str = loop_config["distill_target"]
        self.identity: dict[str, Any] = loop_config["distill_identity"]
        super().__init__(loop_config)
        self.teacher.to(self.device)
        self.swapper: WordSwapper | None = None
        augment = self.distill.augment
        if augment is not None and self.loaded.tokenizer is not None:
            table = self.teacher.get_input_embeddings().weight
            words = self.train_set.features["input_ids"].unique().tolist()  # type: ignore[attr-defined]
            self.swapper = WordSwapper.for_teacher(self.loaded.tokenizer, table, words, augment.neighbours)

    def job_storage(self) -> JobStorage:
        return JobStorage(self.config.storage, self.config.namespace, self.config.name)

    def run_storage(self, loop_config: dict[str, Any]) -> JobStorage:
        return self.job_storage().within(student_key(self.target_name))

    def metrics_job(self) -> str:
        # A series of its own (bert/students/tiny): the student's loss never continues the job's curve.
        return f"{self.config.name}/{student_key(self.target_name)}"

    def load_model(self) -> LoadedModel:
        _, self.distill = distill_target(self.config, self.target_name)
        with tempfile.TemporaryDirectory(prefix="edgetune-teacher-") as folder:  # loaded whole into memory
            self.job_storage().download_dir(MODEL_KEY, Path(folder))
            teacher, header = load_artifact(Path(folder))
        self.teacher_eval = header.get("eval") or {}
        if self.distill.student.source is not None:
            named = self.config.model.model_copy(update={"source": self.distill.student.source})
            student = load_job_model(self.config.model_copy(update={"model": named}), self.base_dir)
            _same_vocabulary(teacher, student, self.distill.student.source)
            self.student_record: dict[str, Any] = {"kind": "named", "source": self.distill.student.source}
        else:
            student, self.student_record = build_student(teacher, self.distill)
        # Student layer i (1-based, as in hidden_states, whose 0 is the embeddings) learns teacher layer k's output.
        self.hidden_weight = hidden_weight_of(self.distill)
        kept = self.student_record.get("keptLayers") or range(1, self.student_record.get("teacherLayers", 0) + 1)
        self.layer_pairs = list(enumerate(kept, start=1)) if self.hidden_weight else []
        self.student_record["hiddenWeight"] = self.hidden_weight
        self.teacher = teacher.model.eval()
        for param in self.teacher.parameters():
            param.requires_grad = False
        self.teacher_family = teacher.family
        return student

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        distill, labels = self.distill, batch["labels"]
        if self.teacher_family != "hf":
            logits = forward(self.model, batch, self.loaded.family)
            with torch.no_grad():
                teacher_logits = forward(self.teacher, batch, self.teacher_family)
            return distillation_loss(logits, teacher_logits, labels, distill.temperature, distill.soft_target_weight)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.swapper is not None:  # the batch, then its swapped copy: one forward, so DDP syncs once
            ids = torch.cat([ids, self.swapper.swap(ids, distill.augment.probability, self.swap_generator())])
            mask = torch.cat([mask, mask])
        hidden = bool(self.hidden_weight)
        student = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
        with torch.no_grad():
            teacher = self.teacher(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
        loss = distillation_loss(
            student.logits.float(), teacher.logits.float(), labels, distill.temperature, distill.soft_target_weight
        )
        if hidden:
            layers = hidden_state_loss(student.hidden_states, teacher.hidden_states, self.layer_pairs, mask)
            loss = loss + self.hidden_weight * layers
        return loss

    def swap_generator(self) -> torch.Generator:
        """The swaps of this micro-batch are a function of (seed, rank, epoch, micro-batch): a resumed run
        swaps as the interrupted one would have."""
        state = self.state
        seed = self.config.training.seed
        return torch.Generator().manual_seed(hash((seed, self.rank, state.epoch, state.batch_in_epoch)) % 2**63)

    def artifact_extra(self) -> dict[str, Any]:
        reshaped = "pruned" in self.student_record or "factorized" in self.student_record
        return {
            **super().artifact_extra(),
            **({"structure": structure_of(unwrap(self.model))} if reshaped else {}),
            "distill": {
                **self.identity,
                "target": self.target_name,
                "student": self.student_record,
                "teacherEval": self.teacher_eval,
            },
        }


def _same_vocabulary(teacher: LoadedModel, student: LoadedModel, source: str) -> None:
    """Teacher and student read the same encoded batch, so a text student must share the teacher's tokens."""
    if teacher.tokenizer is None or student.tokenizer is None:
        return
    if teacher.tokenizer.get_vocab() != student.tokenizer.get_vocab():
        raise ModelLoadError(
            f"student source {source!r} has another vocabulary than the teacher; both read the same token ids, "
            "so choose a student with the teacher's tokenizer, or a cut of the teacher (student.layers)"
        )


def distill_loop_per_worker(loop_config: dict[str, Any]) -> None:
    run_worker(DistillWorker, loop_config)


def prepare_distillation(
    config: TrainJobConfig,
    target_name: str,
    *,
    base_dir: Path | None = None,
    fresh: bool = False,
    retry: RetryPolicy | None = None,
) -> tuple[PreparedRun, dict[str, Any]]:
    """Check the teacher and the data, tie the student's storage to this teacher and spec (starting it over
    when either changed, or with `fresh`); the prepared run and the student's identity."""
    _, distill = distill_target(config, target_name)
    job_storage = JobStorage(config.storage, config.namespace, config.name, retry)
    job_storage.check_reachable()
    # What makes two students the same: the teacher, the spec, and what the spec leaves to defaults.
    identity = {
        "teacher": teacher_digest(job_storage),
        "spec": distill.to_dict(),
        "hiddenWeight": hidden_weight_of(distill),
    }
    if distill.student.source is None and job_storage.exists(f"{MODEL_KEY}/config.json"):
        problem = student_problem(distill, json.loads(job_storage.read_bytes(f"{MODEL_KEY}/config.json")))
        if problem:
            raise ModelLoadError(f"export target {target_name}: {problem}")
    storage = job_storage.within(student_key(target_name))
    recorded = json.loads(storage.read_bytes(IDENTITY_FILE)) if storage.exists(IDENTITY_FILE) else None
    if fresh or recorded != identity:
        if recorded is not None:
            log.info("%s: the teacher or the distill spec changed; the student starts over", target_name)
        storage.delete_dir(ckpt.CHECKPOINTS_KEY)
        storage.delete_dir(MODEL_KEY)
        storage.write_bytes(IDENTITY_FILE, json.dumps(identity, sort_keys=True).encode())
    student = student_config(config, distill)
    base_dir = base_dir.resolve() if base_dir else None
    plan = preflight(student, base_dir)
    return PreparedRun(student, storage, base_dir, plan, finished_run(student, storage, plan, identity)), identity


def run_distillation(
    config: TrainJobConfig,
    target_name: str,
    *,
    base_dir: Path | None = None,
    sinks: Sequence[ProgressSink] = (log_sink,),
    fresh: bool = False,
    max_failures: int = 2,
    ray_init: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    one_worker_per_node: bool = False,
) -> TrainResult:
    """Distill the student of export target `target_name` to completion (resuming from its latest
    checkpoint); a student already distilled from this teacher with this spec is not trained again."""
    prepared, identity = prepare_distillation(config, target_name, base_dir=base_dir, fresh=fresh, retry=retry)
    if prepared.finished is not None:
        log.info("student of %s already distilled: %s", target_name, prepared.finished.model_uri)
        return prepared.finished
    return launch_distillation(
        prepared,
        identity,
        target_name,
        sinks=sinks,
        max_failures=max_failures,
        ray_init=ray_init,
        one_worker_per_node=one_worker_per_node,
    )


def launch_distillation(
    prepared: PreparedRun,
    identity: dict[str, Any],
    target_name: str,
    *,
    sinks: Sequence[ProgressSink] = (log_sink,),
    max_failures: int = 2,
    ray_init: dict[str, Any] | None = None,
    one_worker_per_node: bool = False,
) -> TrainResult:
    """Run a prepared distillation on Ray (started here unless it already runs) and wait for it."""
    try:
        return launch_training(
            prepared,
            sinks=sinks,
            max_failures=max_failures,
            ray_init=ray_init,
            one_worker_per_node=one_worker_per_node,
            loop=distill_loop_per_worker,
            loop_extra={"distill_target": target_name, "distill_identity": identity},
        )
    except TrainingError as err:
        raise TrainingError(f"distillation of export target {target_name}: {err}") from err
