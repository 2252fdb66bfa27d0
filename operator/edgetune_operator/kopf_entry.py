"""The operator's handlers for `kopf run -m edgetune_operator.kopf_entry --namespace NS`.

`edgetune-operator` is the supported entry point (flags, metrics port, leader election); this module lets
a kopf user run the same handlers with kopf's own command line. Settings come from the environment:
EDGETUNE_NAMESPACES (comma-separated; what the resync walks, empty: all), EDGETUNE_TRAINER_IMAGE,
EDGETUNE_STORAGE_URI / _ENDPOINT / _SECRET, EDGETUNE_NETWORK_POLICY (JSON, as --network-policy),
EDGETUNE_METRICS_PORT (default 8080, 0: off).
"""

from __future__ import annotations

import os

import kopf

from edgetune_operator.handlers import register
from edgetune_operator.kubeapi import Kube
from edgetune_operator.main import api_client, build_parser, defaults_from
from edgetune_operator.metrics import OperatorMetrics
from edgetune_operator.reconciler import Reconciler

_namespaces = [n for n in os.environ.get("EDGETUNE_NAMESPACES", "").split(",") if n]
_args = build_parser().parse_args(["--all-namespaces"])  # only for the EDGETUNE_* defaults
_metrics = OperatorMetrics()
_metrics.leader.set(1)  # `kopf run` has no Lease: this process is the only one reconciling
_reconciler = Reconciler(Kube(api_client(None)), defaults_from(_args), _metrics, _namespaces)
register(kopf.get_default_registry(), _reconciler, _args.resync_seconds)
_port = int(os.environ.get("EDGETUNE_METRICS_PORT", "8080"))
if _port:
    _metrics.serve(_port)
