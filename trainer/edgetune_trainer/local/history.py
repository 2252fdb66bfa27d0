"""A job's progress across runs, kept in its storage (`history.json` next to `checkpoints/`), so a run
that resumed, or found the job already finished, still knows the whole loss curve and the final loss.

Events are keyed by (kind, step): a resumed run repeats the steps after its checkpoint, and its events
replace the ones the interrupted run reported for those steps.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, fields

from edgetune_trainer.storage.job import JobStorage
from edgetune_trainer.training.progress import ProgressEvent

HISTORY_KEY = "history.json"
KINDS = ("progress", "eval", "checkpoint")
# Per-process details (worker pids, parameter checksums) mean nothing in a later run.
_KEPT = [f.name for f in fields(ProgressEvent) if f.name not in ("pids", "param_checksums", "startup")]


class RunHistory:
    def __init__(self, events: list[ProgressEvent] | None = None) -> None:
        self._events: dict[tuple[str, int], ProgressEvent] = {}
        self._lock = threading.Lock()  # events arrive on the progress thread; saves come from both
        for event in events or []:
            self.add(event)

    @classmethod
    def load(cls, storage: JobStorage) -> RunHistory:
        if not storage.exists(HISTORY_KEY):
            return cls()
        records = json.loads(storage.read_bytes(HISTORY_KEY))
        return cls([ProgressEvent(**{k: v for k, v in record.items() if k in _KEPT}) for record in records])

    def add(self, event: ProgressEvent) -> None:
        if event.kind in KINDS:
            with self._lock:
                self._events[(event.kind, event.step)] = event

    def save(self, storage: JobStorage) -> None:
        records = [{k: v for k, v in asdict(e).items() if k in _KEPT} for e in self.events()]
        storage.write_bytes(HISTORY_KEY, json.dumps(records, indent=1).encode())

    def events(self, kind: str | None = None) -> list[ProgressEvent]:
        """Events in step order (of one kind when given)."""
        with self._lock:
            chosen = [e for (k, _), e in self._events.items() if kind is None or k == kind]
        return sorted(chosen, key=lambda e: (e.step, KINDS.index(e.kind)))

    def final_loss(self) -> float | None:
        losses = [e.loss for e in self.events("progress") if e.loss is not None]
        return losses[-1] if losses else None

    def mean_samples_per_second(self) -> float | None:
        rates = [e.samples_per_second for e in self.events("progress") if e.samples_per_second]
        return sum(rates) / len(rates) if rates else None

    def latest_checkpoint(self) -> ProgressEvent | None:
        checkpoints = self.events("checkpoint")
        return checkpoints[-1] if checkpoints else None
