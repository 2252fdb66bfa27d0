"""The operator's permissions: exactly the verbs and resources it uses, nothing more.

The chart's Role (one per watched namespace) or ClusterRole (--all-namespaces) is rendered from these
rules, and the control-plane tests run the operator with only these rules bound to its ServiceAccount,
so a missing rule fails a test and an unused one has no reason to be here.
"""

from __future__ import annotations

from typing import Any

from edgetune_operator.api import GROUP


def operator_rules() -> list[dict[str, Any]]:
    return [
        # Watch FineTuneJobs and write their status (never their spec).
        {"apiGroups": [GROUP], "resources": ["finetunejobs"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [GROUP], "resources": ["finetunejobs/status"], "verbs": ["get", "patch"]},
        # One RayJob per attempt: create, watch, suspend/resume (patch), delete on a passed deadline.
        {
            "apiGroups": ["ray.io"],
            "resources": ["rayjobs"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        },
        # Export Jobs, and their pods' termination messages (the export's figures).
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        # The trainer config of each attempt, and the per-job identity of the Ray head.
        {"apiGroups": [""], "resources": ["configmaps", "serviceaccounts"], "verbs": ["create"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create"]},
        # Check that spec.storage.credentialsSecret exists and has its keys before launching; create each
        # attempt's Ray token (never read back: the operator only writes it).
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
        # Each job's NetworkPolicies and PodDisruptionBudget.
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["create"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]


def leader_election_rules(lease_name: str) -> list[dict[str, Any]]:
    """--leader-elect (replicas > 1), in the operator's own namespace: create the Lease, then read and renew
    only that one (create cannot be limited by name: the API server does not know it before the object)."""
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease_name],
            "verbs": ["get", "update", "patch"],
        },
    ]
