"""How a FineTuneJob's children are named and labelled, and the owner reference that ties each to its job
(so the garbage collector removes it with the job; no finalizer is needed)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from edgetune_operator.api import API_VERSION, KIND

LABEL_JOB = "edgetune.dev/job"
LABEL_ATTEMPT = "edgetune.dev/attempt"
LABEL_COMPONENT = "edgetune.dev/component"
LABEL_TARGET = "edgetune.dev/export-target"
LABEL_STAGE = "edgetune.dev/stage"  # on a distillation's RayJob and pods: distill (training's have none)
STAGE_DISTILL = "distill"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"


@dataclass(frozen=True)
class JobRef:
    """The FineTuneJob a child belongs to."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def bounded_name(base: str, suffix: str, limit: int) -> str:
    """`<base><suffix>` if it fits in `limit` as a DNS-1035 label; otherwise a cut base plus a hash of the
    full base, so two long names that share a prefix never collide."""
    if not re.match(r"^[a-z]", base):
        base = "j" + base
    if len(base) + len(suffix) <= limit:
        return base + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:6]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}{suffix}"


def labels(job: JobRef, component: str, **extra: str) -> dict[str, str]:
    return {LABEL_JOB: job.name, LABEL_COMPONENT: component, LABEL_MANAGED_BY: "edgetune", **extra}


def metadata(name: str, job: JobRef, object_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": object_labels,
        "ownerReferences": [job.owner_reference()],
    }
