"""Progress into the FineTuneJob's status, from the Ray driver on the head pod: a progress sink.

Why push rather than have the operator scrape rank 0's metrics port: the driver already receives every
event (progress, eval, checkpoint), the checkpoint's URI is a string no Prometheus sample carries, and the
operator then needs no network path to training pods. The price is one narrow grant: the head pod's
ServiceAccount, created per job by the operator, may `get` and `patch` `finetunejobs/status` of this one
job (resourceNames) and nothing else; workers mount no token at all.

It speaks plain HTTPS with the pod's ServiceAccount token (no Kubernetes client in the trainer) and sends
merge patches of `status.progress` and `status.latestCheckpoint` only, the fields the operator never
writes. Progress is throttled (`min_interval`); checkpoint, eval and final events go at once. A checkpoint
report older than the progress already sent moves only `latestCheckpoint`, so `kubectl get ftj` never shows
progress going backwards (after a worker-group restart, rank 0's own progress does go back, and is shown).
A failed patch is logged and dropped: reporting must never stop training.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune_trainer.training.progress import ProgressEvent

log = logging.getLogger("edgetune.status")

# Progress reaches the status at most this often. Each report is a write to the API server and a watch event
# for the operator: at a thousand running jobs, 100 a second (bench/bench_operator.py runs exactly that).
PROGRESS_EVERY_S = 10.0
TARGET_ENV = "EDGETUNE_STATUS_TARGET"  # "<namespace>/<name>", set by the operator on the head pod
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the API server is and how to authenticate: in a pod, from its ServiceAccount mount."""

    url: str
    token_file: Path
    ca_file: Path | None

    @classmethod
    def from_environment(cls) -> ApiEndpoint:
        """In-cluster values; EDGETUNE_KUBE_API / _TOKEN_FILE / _CA_FILE override them (tests, dev)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        ca = os.environ.get("EDGETUNE_KUBE_CA_FILE", str(SERVICE_ACCOUNT / "ca.crt"))
        return cls(
            url=os.environ.get("EDGETUNE_KUBE_API", f"https://{host}:{port}"),
            token_file=Path(os.environ.get("EDGETUNE_KUBE_TOKEN_FILE", str(SERVICE_ACCOUNT / "token"))),
            ca_file=Path(ca) if ca else None,
        )


class StatusReporter:
    """A `ProgressSink` that patches the job's status with the latest progress and checkpoint."""

    def __init__(
        self,
        endpoint: ApiEndpoint,
        namespace: str,
        name: str,
        checkpoint_uri: Callable[[str], str],
        min_interval: float = PROGRESS_EVERY_S,
    ) -> None:
        self.endpoint = endpoint
        self.path = f"/apis/edgetune.dev/v1alpha1/namespaces/{namespace}/finetunejobs/{name}/status"
        self.checkpoint_uri = checkpoint_uri
        self.min_interval = min_interval
        self.progress: dict[str, Any] = {}
        self.failures = 0
        self._last_sent = 0.0
        self._context = ssl.create_default_context(cafile=str(endpoint.ca_file) if endpoint.ca_file else None)

    @classmethod
    def from_environment(cls, checkpoint_uri: Callable[[str], str]) -> StatusReporter | None:
        """A reporter when the operator asked for one (EDGETUNE_STATUS_TARGET), else None."""
        target = os.environ.get(TARGET_ENV, "")
        if not target:
            return None
        namespace, _, name = target.partition("/")
        if not namespace or not name:
            log.warning("%s=%r is not <namespace>/<name>: status reporting off", TARGET_ENV, target)
            return None
        return cls(ApiEndpoint.from_environment(), namespace, name, checkpoint_uri)

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "checkpoint" and event.step < self.progress.get("step", -1):
            # Checkpoint reports reach the driver by a slower road (Ray Train's controller) than rank 0's
            # progress: by now training is past this step. Record the checkpoint; keep the newer progress.
            if event.checkpoint:
                self._send({"latestCheckpoint": self.checkpoint_uri(event.checkpoint)})
            return
        progress = self.progress
        progress.update(epoch=event.epoch, step=event.step, totalSteps=event.total_steps, percent=event.percent)
        if event.loss is not None:
            progress["loss"] = round(event.loss, 6)
        if event.samples_per_second is not None:
            progress["samplesPerSecond"] = round(event.samples_per_second, 3)
        if event.eval_accuracy is not None:
            progress["evalMetric"] = round(event.eval_accuracy, 6)
        status: dict[str, Any] = {"progress": dict(progress)}
        if event.kind == "checkpoint" and event.checkpoint:
            status["latestCheckpoint"] = self.checkpoint_uri(event.checkpoint)
        elif event.kind == "progress" and time.monotonic() - self._last_sent < self.min_interval:
            return
        self._send(status)

    def _send(self, status: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.endpoint.url + self.path,
            data=json.dumps({"status": status}).encode(),
            method="PATCH",
            headers={
                "Content-Type": "application/merge-patch+json",
                "Authorization": f"Bearer {self.endpoint.token_file.read_text().strip()}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._context) as response:
                response.read()
            self._last_sent = time.monotonic()
        except (urllib.error.URLError, OSError) as err:
            self.failures += 1
            detail = err.read().decode(errors="replace")[:300] if isinstance(err, urllib.error.HTTPError) else err
            log.warning("status report to %s failed: %s", self.endpoint.url + self.path, detail)
