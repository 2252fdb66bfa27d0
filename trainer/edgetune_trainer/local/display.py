"""What a person watching `edgetune run` sees: a progress bar per epoch (loss, samples/s, eval), a line
per checkpoint and per export, and the summary table at the end.

`LiveDisplay` draws rich progress bars on a terminal; `Display` writes plain lines to stderr instead
(output piped to a file, or `--json`, where stdout carries only the summary JSON). Both are progress
sinks: the trainer's progress thread calls them with every `ProgressEvent`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgetune_trainer.config import ExportTarget
from edgetune_trainer.training.progress import ProgressEvent


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.2f} MB"


def _number(value: float | None, pattern: str = "{:.4f}") -> str:
    return "-" if value is None else pattern.format(value)


def _epochs(event: ProgressEvent) -> int:
    return -(-event.total_steps // event.steps_per_epoch) if event.steps_per_epoch else 1


def export_line(entry: dict[str, Any]) -> str:
    verdict = "budgets met" if entry["budgetsMet"] else "FAILED"
    reused = " (already exported from this model)" if entry["reused"] else ""
    return f"export {entry['name']}: {verdict}{reused}: {entry['message']}"


class Display:
    """Plain progress lines on stderr."""

    def __init__(self, checkpoint_uri: Callable[[str], str]) -> None:
        self.checkpoint_uri = checkpoint_uri
        self._resume_told = False

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def starting(self, text: str) -> None:
        """Something that takes a while before the first event (Ray and the workers starting)."""
        self.note(text)

    def __call__(self, event: ProgressEvent) -> None:
        if event.resumed_from and not self._resume_told:
            self._resume_told = True
            self.note(f"resumed from {event.resumed_from}")
        head = f"step {event.step}/{event.total_steps} epoch {min(event.epoch + 1, _epochs(event))}/{_epochs(event)}"
        if event.kind == "progress":
            self.note(f"{head}: loss {_number(event.loss)}, {_number(event.samples_per_second, '{:.1f}')} samples/s")
        elif event.kind == "eval":
            self.note(
                f"epoch {event.epoch}/{_epochs(event)} done: eval accuracy {_number(event.eval_accuracy)}, "
                f"macro-F1 {_number(event.eval_macro_f1)}"
            )
        elif event.kind == "checkpoint":
            self.note(self.checkpoint_line(event))

    def checkpoint_line(self, event: ProgressEvent) -> str:
        where = self.checkpoint_uri(event.checkpoint) if event.checkpoint else event.checkpoint_uri
        return f"checkpoint at step {event.step}: {where} ({_mb(event.checkpoint_bytes)})"

    def export_started(self, target: ExportTarget) -> None:
        quantize = "" if target.quantize == "none" else f" {target.quantize}"
        self.note(f"export {target.name}: {target.format}{quantize}...")

    def export_done(self, entry: dict[str, Any]) -> None:
        self.note(export_line(entry))

    def close(self) -> None:
        """Nothing is drawn, so nothing is left to stop."""


class LiveDisplay(Display):
    """rich progress bars on a terminal: one per epoch, lines printed above them."""

    def __init__(self, checkpoint_uri: Callable[[str], str], console: Console) -> None:
        super().__init__(checkpoint_uri)
        self.console = console
        self.progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.progress.start()
        self._waiting: TaskID | None = None
        self._epochs: dict[int, tuple[TaskID, int]] = {}  # 0-based epoch -> its bar and its steps
        self._losses: dict[int, str] = {}

    def note(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def starting(self, text: str) -> None:
        self._stop_waiting()
        self._waiting = self.progress.add_task(text, total=None, stats="")

    def _stop_waiting(self) -> None:
        if self._waiting is not None:
            self.progress.remove_task(self._waiting)
            self._waiting = None

    def _bar(self, epoch: int, event: ProgressEvent) -> tuple[TaskID, int]:
        """The bar of a 0-based epoch and its steps, made on its first event (a resumed run starts
        mid-epoch)."""
        if epoch not in self._epochs:
            per_epoch = event.steps_per_epoch or event.total_steps
            steps = min(per_epoch, event.total_steps - epoch * per_epoch)
            task = self.progress.add_task(f"epoch {epoch + 1}/{_epochs(event)}", total=steps, completed=0, stats="")
            self._epochs[epoch] = (task, steps)
        return self._epochs[epoch]

    def __call__(self, event: ProgressEvent) -> None:
        self._stop_waiting()
        if event.resumed_from and not self._resume_told:
            self._resume_told = True
            self.note(f"resumed from {event.resumed_from}")
        per_epoch = event.steps_per_epoch or event.total_steps
        if event.kind == "progress":
            task, _ = self._bar(event.epoch, event)
            self._losses[event.epoch] = f"loss {_number(event.loss)}"
            stats = f"{self._losses[event.epoch]}  {_number(event.samples_per_second, '{:.0f}')} samples/s"
            self.progress.update(task, completed=event.step - event.epoch * per_epoch, stats=stats)
        elif event.kind == "eval" and event.epoch > 0:  # event.epoch counts the epochs completed
            done = event.epoch - 1
            task, steps = self._bar(done, event)
            # A finished epoch shows its eval rather than a throughput nobody is waiting on any more.
            stats = f"{self._losses.get(done, '')}  eval acc {_number(event.eval_accuracy, '{:.3f}')}".strip()
            self.progress.update(task, completed=steps, stats=stats)
        elif event.kind == "checkpoint":
            self.note(self.checkpoint_line(event))
        elif event.kind == "final":
            for task, steps in self._epochs.values():
                self.progress.update(task, completed=steps)

    def export_started(self, target: ExportTarget) -> None:
        quantize = "" if target.quantize == "none" else f" {target.quantize}"
        self.starting(f"export {target.name}: {target.format}{quantize}")

    def export_done(self, entry: dict[str, Any]) -> None:
        self._stop_waiting()
        style = "green" if entry["budgetsMet"] else "bold red"
        self.progress.console.print(f"[{style}]{export_line(entry)}[/]", highlight=False)

    def close(self) -> None:
        self._stop_waiting()
        self.progress.stop()


def summary_tables(summary: dict[str, Any]) -> Group:
    """The run at a glance, then one row per export target."""
    run = Table(title=f"edgetune run {summary['job']}: {summary['phase']}", show_header=False, title_justify="left")
    run.add_column(style="bold")
    run.add_column(overflow="fold")
    if summary.get("totalSteps"):
        training = f"{summary['steps']}/{summary['totalSteps']} steps"
        if summary.get("alreadyFinished"):
            training += " (already finished: nothing trained; --fresh trains again)"
        elif summary.get("resumedFrom"):
            training += f", resumed from {summary['resumedFrom']}"
        run.add_row("training", training)
        run.add_row("final loss", _number(summary.get("finalLoss")))
        run.add_row(
            "eval", f"accuracy {_number(summary.get('evalAccuracy'))}, macro-F1 {_number(summary.get('evalMacroF1'))}"
        )
        run.add_row("samples/s", _number(summary.get("samplesPerSecond"), "{:.1f}"))
    run.add_row(
        "time",
        f"{summary['wallSeconds']:.1f} s (training {summary['trainSeconds']:.1f} s, "
        f"exports {summary['exportSeconds']:.1f} s)",
    )
    run.add_row(
        "checkpoints",
        f"{summary['checkpointsWritten']} written by this run; latest {summary.get('latestCheckpoint') or '-'}",
    )
    if summary.get("model"):
        run.add_row("model", summary["model"])
    storage = summary["storage"]
    run.add_row("storage", storage["description"])
    if summary.get("curves"):
        run.add_row("curves", summary["curves"])
    if summary["phase"] != "Succeeded":
        run.add_row("message", summary["message"])
    parts: list[Any] = [run]
    if summary["exports"]:
        exports = Table(title="exports", title_justify="left")
        for column in ("target", "size", "p95 latency", "accuracy drop", "budgets", "verdict"):
            exports.add_column(column, overflow="fold")
        for entry in summary["exports"]:
            budgets = "\n".join(
                f"{check['budget']} {check['measured']:.3g} <= {check['limit']:g}: "
                + ("ok" if check["passed"] else "[bold red]missed[/]")
                for check in entry["budgets"]
            )
            verdict = "[green]passed[/]" if entry["budgetsMet"] else f"[bold red]failed[/]: {entry['message']}"
            exports.add_row(
                entry["name"],
                _mb(entry["sizeBytes"]),
                _number(entry["latencyMs"], "{:.2f} ms"),
                _number(entry["accuracyDrop"], "{:+.2f} pt"),
                budgets or "-",
                verdict,
            )
        parts.append(exports)
    return Group(*parts)
