"""Child objects of a FineTuneJob, rendered by pure functions: spec in, dict out.

Per attempt: a ConfigMap with the trainer's config and a KubeRay `RayJob` (ray.io/v1). Per job: a
ServiceAccount with a Role that may only get and patch *this* job's status, so the Ray driver can report
progress and the latest checkpoint (see `edgetune_trainer.training.status_report`). After training: one
`batch/v1` Job per export target. Every child carries a controller ownerReference to the FineTuneJob,
so the garbage collector removes it with the job; no finalizer is needed.

Names are deterministic (`<job>-a<attempt>`, `<job>-export-<target>`): creating an object that already
exists answers 409, which is how a restarted operator avoids launching twice.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from edgetune_operator.api import API_VERSION, FineTuneJobSpec, to_trainer_config
from edgetune_operator.identity import (
    LABEL_ATTEMPT,
    LABEL_STAGE,
    LABEL_TARGET,
    STAGE_DISTILL,
    JobRef,
    bounded_name,
    labels,
    metadata,
)
from edgetune_operator.security import (
    COMPONENT_EXPORT,
    COMPONENT_SUBMITTER,
    COMPONENT_TRAINER,
    RAY_METRICS_PORT,
    NetworkPolicySettings,
    container_security,
    pod_security,
    ray_auth_options,
    render_disruption_budget,
    render_network_policies,
)
from edgetune_trainer import ray_settings
from edgetune_trainer.config import ExportTarget, StorageSpec

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ANNOTATION_SUSPENDED_BY = "edgetune.dev/suspended-by"

CONFIG_DIR = "/etc/edgetune"
CONFIG_FILE = "trainer-config.json"
# The trainer's Prometheus endpoint (rank 0) on each worker pod. Not 8080, and not named "metrics": KubeRay
# starts every Ray node with --metrics-export-port=8080 and adds a port named "metrics" for it unless the
# pod already has one; on 8080 rank 0's endpoint found the port taken (seen on kind) and served nothing.
METRICS_PORT = 8090
METRICS_PORT_NAME = "train-metrics"
TERMINATION_LOG = "/dev/termination-log"

# KubeRay appends "-" + 5 characters to a RayJob's name to name its RayCluster (at most 53), hence 47;
# both must be DNS-1035 labels (start with a letter).
MAX_RAYJOB_NAME = 47
MAX_LABEL_NAME = 63  # Job names become the pods' job-name label value
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class OperatorDefaults:
    """What the operator's install provides (Helm values, flags): the image, default storage, policies."""

    trainer_image: str = "ghcr.io/edgetune/trainer:0.1.0"
    ray_version: str = "2.59.0"
    storage: StorageSpec = field(default_factory=StorageSpec)
    head_cpu: str = "1"
    # The head runs GCS, the dashboard, the driver and Ray Train's controller (each of the last two imports
    # torch: about 570 MB apiece). On kind, 2Gi left it at 1986 MiB of 2048 after a worker-group restart, and
    # Ray's memory monitor killed the training workers until the restarts ran out.
    head_memory: str = "4Gi"
    max_worker_restarts: int = 3  # Ray Train worker-group restarts within one attempt
    network_policy: NetworkPolicySettings = field(default_factory=NetworkPolicySettings)


def rayjob_name(job: str, attempt: int) -> str:
    return bounded_name(job, f"-a{attempt}", MAX_RAYJOB_NAME)


def distill_rayjob_name(job: str, attempt: int) -> str:
    """Attempt `attempt` of the job's distillation (every export target's student, in one RayJob)."""
    return bounded_name(job, f"-d{attempt}", MAX_RAYJOB_NAME)


def config_map_name(job: str, attempt: int) -> str:
    return rayjob_name(job, attempt) + "-config"


def export_job_name(job: str, target: str) -> str:
    return bounded_name(job, f"-export-{target}", MAX_LABEL_NAME)


def trainer_account_name(job: str) -> str:
    return bounded_name(job, "-trainer", MAX_LABEL_NAME)


def effective_storage(spec: StorageSpec, defaults: StorageSpec) -> StorageSpec:
    """The job's storage with unset fields taken from the operator's defaults."""
    merged = defaults.model_dump(by_alias=False) | spec.model_dump(by_alias=False, exclude_unset=True)
    return StorageSpec.model_validate(merged, by_name=True)


def trainer_config_json(job: JobRef, spec: FineTuneJobSpec, defaults: OperatorDefaults) -> str:
    storage = effective_storage(spec.storage, defaults.storage)
    config = to_trainer_config(spec.model_copy(update={"storage": storage}), job.name, job.namespace)
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def render_config_map(job: JobRef, spec: FineTuneJobSpec, attempt: int, defaults: OperatorDefaults) -> dict[str, Any]:
    """The trainer config of one attempt; export Jobs mount the one of the attempt that succeeded."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            config_map_name(job.name, attempt), job, labels(job, COMPONENT_TRAINER, **{LABEL_ATTEMPT: str(attempt)})
        ),
        "data": {CONFIG_FILE: trainer_config_json(job, spec, defaults)},
    }


def render_trainer_rbac(job: JobRef) -> list[dict[str, Any]]:
    """ServiceAccount + Role + RoleBinding: the Ray head may get and patch this one job's status, no more."""
    name = trainer_account_name(job.name)
    account_labels = labels(job, COMPONENT_TRAINER)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(name, job, account_labels)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(name, job, account_labels),
            "rules": [
                {
                    "apiGroups": [API_VERSION.split("/")[0]],
                    "resources": ["finetunejobs/status"],
                    "resourceNames": [job.name],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(name, job, account_labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.namespace}],
        },
    ]


def render_job_safeguards(job: JobRef, spec: FineTuneJobSpec, defaults: OperatorDefaults) -> list[dict[str, Any]]:
    """Per job, created with its first attempt: its NetworkPolicies (unless the install turned them off) and
    the PodDisruptionBudget of its Ray pods."""
    policies = render_network_policies(job, defaults.network_policy, (RAY_METRICS_PORT, METRICS_PORT))
    return [*policies, render_disruption_budget(job, spec.resources.workers)]


def credential_env(storage: StorageSpec) -> list[dict[str, Any]]:
    """Storage credentials as references to the Secret's keys: the values never appear in any object."""
    if storage.credentials_secret is None:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": storage.credentials_secret, "key": key}}}
        for key in CREDENTIAL_KEYS
    ]


def ray_settings_env() -> list[dict[str, str]]:
    """What a training job's Ray does not need on a cluster, turned off (edgetune_trainer/ray_settings.py:
    usage stats, idle prestarted workers; the dashboard, metrics and task events stay for their users)."""
    return [{"name": key, "value": value} for key, value in ray_settings.CLUSTER.items()]


def _config_volume(config_map: str) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": "edgetune-config", "configMap": {"name": config_map}}
    mount = {"name": "edgetune-config", "mountPath": CONFIG_DIR, "readOnly": True}
    return volume, mount


def train_entrypoint(defaults: OperatorDefaults, distill: bool = False) -> list[str]:
    """The driver's argv. Only fixed strings go in: the user's spec reaches the trainer as a file."""
    return [
        "edgetune-train",
        *(["--distill-all"] if distill else []),
        "--config",
        f"{CONFIG_DIR}/{CONFIG_FILE}",
        "--max-failures",
        str(defaults.max_worker_restarts),
        # Each worker pod below is sized for one training worker; Ray would otherwise pack two fractional-CPU
        # workers into one pod (it rounds the pod's CPU limit up) and DDP would never cross the pod network.
        "--one-worker-per-node",
    ]


def render_rayjob(
    job: JobRef,
    spec: FineTuneJobSpec,
    attempt: int,
    defaults: OperatorDefaults,
    deadline_left_s: int | None = None,
    *,
    distill_of: int | None = None,
) -> dict[str, Any]:
    """The KubeRay RayJob of one attempt: a head running the driver and one fixed-size worker group.

    `distill_of`: instead, attempt `attempt` of the distillation after training attempt `distill_of`
    succeeded. The same cluster shape, NetworkPolicies and Ray token scheme; the trainer config of that
    training attempt; `--distill-all` in the entrypoint. Its head reports no progress into the job's
    status, whose progress and latestCheckpoint stay the training run's."""
    resources = spec.resources
    run_policy = spec.run_policy
    storage = effective_storage(spec.storage, defaults.storage)
    image = resources.image or defaults.trainer_image
    distill = distill_of is not None
    name = distill_rayjob_name(job.name, attempt) if distill else rayjob_name(job.name, attempt)
    volume, mount = _config_volume(config_map_name(job.name, distill_of if distill_of is not None else attempt))
    reporting = [
        {"name": "EDGETUNE_STATUS_TARGET", "value": f"{job.namespace}/{job.name}"},
        {"name": "EDGETUNE_ATTEMPT", "value": str(attempt)},
    ]
    head_env = [*ray_settings_env(), *credential_env(storage), *([] if distill else reporting)]
    worker_limits: dict[str, str] = {"cpu": f"{resources.cpus_per_worker:g}", "memory": resources.memory_per_worker}
    if resources.gpus_per_worker:
        worker_limits["nvidia.com/gpu"] = str(resources.gpus_per_worker)
    head_resources = {"cpu": defaults.head_cpu, "memory": defaults.head_memory}

    head_pod = {
        "serviceAccountName": trainer_account_name(job.name),
        "securityContext": pod_security(),
        "containers": [
            {
                "name": "ray-head",
                "image": image,
                "resources": {"requests": dict(head_resources), "limits": dict(head_resources)},
                "ports": [
                    {"name": "gcs-server", "containerPort": 6379},
                    {"name": "dashboard", "containerPort": 8265},
                    {"name": "client", "containerPort": 10001},
                ],
                "env": head_env,
                "volumeMounts": [mount],
                "securityContext": container_security(),
            }
        ],
        "volumes": [volume],
    }
    worker_pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # workers never talk to the Kubernetes API
        "securityContext": pod_security(),
        "containers": [
            {
                "name": "ray-worker",
                "image": image,
                "resources": {"requests": dict(worker_limits), "limits": dict(worker_limits)},
                "ports": [{"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT}],
                "env": [
                    *ray_settings_env(),
                    *credential_env(storage),
                    {"name": "EDGETUNE_METRICS_PORT", "value": str(METRICS_PORT)},
                ],
                "securityContext": container_security(),
            }
        ],
    }
    # The head goes to the training pool too: it holds the driver and the GCS, and a head left unplaced could
    # land on any untainted node, outside the pool the user chose for this job.
    for pod in (head_pod, worker_pod):
        if resources.node_selector:
            pod["nodeSelector"] = dict(resources.node_selector)
        if resources.tolerations:
            pod["tolerations"] = [t.to_dict() for t in resources.tolerations]

    pod_labels = labels(job, COMPONENT_TRAINER, **{LABEL_ATTEMPT: str(attempt)})
    if distill:
        pod_labels[LABEL_STAGE] = STAGE_DISTILL
    if run_policy.queue_name:
        pod_labels[KUEUE_QUEUE_LABEL] = run_policy.queue_name
    workers = resources.workers
    rayjob_spec: dict[str, Any] = {
        "entrypoint": shlex.join(train_entrypoint(defaults, distill)),
        "shutdownAfterJobFinishes": True,
        "backoffLimit": 0,  # retries are the operator's: each one is a new attempt that resumes
        "suspend": run_policy.suspend,
        "submitterPodTemplate": submitter_pod_template(job, attempt, image, resources),
        "rayClusterSpec": {
            "rayVersion": defaults.ray_version,
            # Ray's token authentication: nothing reaches the GCS, the dashboard or a worker without the
            # attempt's token, which only this job's pods (and KubeRay's operator) are given.
            "authOptions": ray_auth_options(name),
            "headGroupSpec": {
                # No CPUs for Ray on the head: every training worker lands in the worker group.
                "rayStartParams": {"num-cpus": "0"},
                "template": {"metadata": {"labels": dict(pod_labels)}, "spec": head_pod},
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": workers,
                    "minReplicas": workers,
                    "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": {"metadata": {"labels": dict(pod_labels)}, "spec": worker_pod},
                }
            ],
        },
    }
    if run_policy.ttl_seconds_after_finished is not None:
        rayjob_spec["ttlSecondsAfterFinished"] = run_policy.ttl_seconds_after_finished
    if deadline_left_s is not None:
        rayjob_spec["activeDeadlineSeconds"] = max(1, deadline_left_s)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata(name, job, pod_labels),
        "spec": rayjob_spec,
    }


# KubeRay's own defaults for the submitter's container; ours differ only in the pod's security and labels.
SUBMITTER_RESOURCES = {"requests": {"cpu": "500m", "memory": "200Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


def submitter_pod_template(job: JobRef, attempt: int, image: str, resources: Any) -> dict[str, Any]:
    """The pod KubeRay runs `ray job submit` in (KubeRay fills in its command, the dashboard address and the
    token). Rendered so that it is labelled as this job's (its NetworkPolicy lets it reach the head) and
    passes the restricted profile, which KubeRay's default template does not (no seccomp, no dropped
    capabilities). It needs no Kubernetes API, and lands on the job's pool like the head."""
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [
            {
                "name": "ray-job-submitter",
                "image": image,
                "resources": {k: dict(v) for k, v in SUBMITTER_RESOURCES.items()},
                "securityContext": container_security(),
            }
        ],
    }
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = [t.to_dict() for t in resources.tolerations]
    return {
        "metadata": {"labels": labels(job, COMPONENT_SUBMITTER, **{LABEL_ATTEMPT: str(attempt)})},
        "spec": pod,
    }


def export_command(target: ExportTarget) -> list[str]:
    return [
        "edgetune-export",
        "--job-config",
        f"{CONFIG_DIR}/{CONFIG_FILE}",
        "--target",
        target.name,
        "--status-file",
        TERMINATION_LOG,
    ]


def render_export_job(
    job: JobRef, spec: FineTuneJobSpec, target: ExportTarget, attempt: int, defaults: OperatorDefaults
) -> dict[str, Any]:
    """The batch/v1 Job exporting one target on its (edge) nodes. Its status line reaches the operator
    through the container's termination message: no storage access for the operator."""
    storage = effective_storage(spec.storage, defaults.storage)
    volume, mount = _config_volume(config_map_name(job.name, attempt))
    limits = {"cpu": target.resources.cpu, "memory": target.resources.memory}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [
            {
                "name": "export",
                "image": spec.resources.image or defaults.trainer_image,
                "command": export_command(target),
                "env": credential_env(storage),
                "resources": {"requests": dict(limits), "limits": dict(limits)},
                "volumeMounts": [mount],
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": container_security(),
            }
        ],
        "volumes": [volume],
    }
    if target.node_selector:
        pod["nodeSelector"] = dict(target.node_selector)
    if target.tolerations:
        pod["tolerations"] = [t.to_dict() for t in target.tolerations]
    pod_labels = labels(job, COMPONENT_EXPORT, **{LABEL_TARGET: target.name})
    job_spec: dict[str, Any] = {
        "backoffLimit": target.backoff_limit,
        "template": {"metadata": {"labels": dict(pod_labels)}, "spec": pod},
    }
    if spec.run_policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(export_job_name(job.name, target.name), job, pod_labels),
        "spec": job_spec,
    }
