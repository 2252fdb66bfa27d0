"""The outcome of one `edgetune run`: what the table shows and what `--json` prints, and its exit code.

The keys of the training part are those `edgetune train` prints (`TrainResult.summary()`), and each
export entry carries the fields of status.exports[], so a script reads a local run the way it reads a
job in a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from edgetune_trainer.local.history import RunHistory
from edgetune_trainer.training.train import TrainResult

Phase = Literal["Succeeded", "Failed", "Interrupted"]
EXIT_CODES: dict[str, int] = {"Succeeded": 0, "Failed": 1, "Interrupted": 130}  # 130: 128 + SIGINT, as shells do


@dataclass
class RunSummary:
    job: str  # namespace/name
    storage: dict[str, Any]
    phase: Phase = "Failed"
    message: str = ""
    result: TrainResult | None = None
    history: RunHistory = field(default_factory=RunHistory)
    checkpoints_written: int = 0
    exports: list[dict[str, Any]] = field(default_factory=list)
    distillations: list[dict[str, Any]] = field(default_factory=list)  # one per export target with distill
    curves: str | None = None
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    export_seconds: float = 0.0
    startup_seconds: dict[str, float] = field(default_factory=dict)  # time to the first step, by phase

    def conclude(self) -> None:
        """Succeeded when training finished and every export met its budgets; else Failed, saying why."""
        if self.result is None:
            self.phase = "Failed"
            return
        failed = [entry for entry in self.exports if not entry["budgetsMet"]]
        if failed:
            self.phase = "Failed"
            self.message = "; ".join(f"export {entry['name']} failed: {entry['message']}" for entry in failed)
        else:
            self.phase = "Succeeded"
            self.message = (
                f"trained {self.result.steps} steps"
                + (" (already finished before this run)" if self.result.already_finished else "")
                + f", {len(self.exports)} export(s) met their budgets"
            )

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.phase]

    def to_dict(self) -> dict[str, Any]:
        latest = self.history.latest_checkpoint()
        return {
            "job": self.job,
            "phase": self.phase,
            "message": self.message,
            **(self.result.summary() if self.result else {}),
            "finalLoss": self.history.final_loss(),
            "samplesPerSecond": self.history.mean_samples_per_second(),
            "checkpointsWritten": self.checkpoints_written,
            "latestCheckpoint": latest.checkpoint_uri if latest else None,
            "wallSeconds": round(self.wall_seconds, 2),
            "trainSeconds": round(self.train_seconds, 2),
            "exportSeconds": round(self.export_seconds, 2),
            "startupSeconds": self.startup_seconds,
            "distillations": self.distillations,
            "exports": self.exports,
            "storage": self.storage,
            "curves": self.curves,
        }
