"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema (2020-12 flavoured: $ref/$defs, anyOf-with-null for optional fields,
numeric exclusiveMinimum). The API server wants a *structural* OpenAPI v3 schema: no $ref, a type
on every node, no anyOf carrying types, boolean exclusiveMinimum. `structural` converts one into the
other; `build_crd` wraps it into the CRD. Both are pure: models in, dict out.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from edgetune_operator.api import GROUP, KIND, PLURAL, VERSION, FineTuneJobSpec, FineTuneJobStatus

CRD_FILENAME = f"{PLURAL}.{GROUP}.yaml"

# Lists whose items are identified by a key: server-side apply merges them item by item.
_LIST_MAP_KEYS = {
    ("spec", "export"): ["name"],
    ("status", "conditions"): ["type"],
    ("status", "exports"): ["name"],
}
_DROPPED_KEYS = {"title", "additionalProperties", "$defs"}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Optimizer steps done, in percent of the total",
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaError(ValueError):
    """The models use a construct that has no structural OpenAPI form."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $ref and collapse `anyOf: [X, null]` into X, keeping the outer node's own keys."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise SchemaError(f"union of {len(branches)} non-null types has no structural form: {branches}")
        branch = _resolve(branches[0], defs)
        node = {
            **branch,
            **{k: v for k, v in node.items() if k != "description" or "description" not in branch},
        }
    return node


def structural(node: dict[str, Any], defs: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """One JSON Schema node (and everything below it) in structural OpenAPI v3 form."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "default" and value is None):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out["properties"] = {name: structural(sub, defs, (*path, name)) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs, path)
        else:
            out[key] = copy.deepcopy(value)
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out["additionalProperties"] = structural(additional, defs, path)
    if "type" not in out:
        raise SchemaError(f"schema at {'.'.join(path) or '<root>'} has no type: {node}")
    if out["type"] == "array" and path in _LIST_MAP_KEYS:
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = _LIST_MAP_KEYS[path]
    if out["type"] == "object":
        absent = {name for name, sub in (node.get("properties") or {}).items() if _defaults_to_none(sub)}
        _default_optional_sections(out, absent)
    return out


def _defaults_to_none(node: dict[str, Any]) -> bool:
    return "default" in node and node["default"] is None


def _default_optional_sections(obj: dict[str, Any], absent: set[str]) -> None:
    """Give optional object sections `default: {}` so that the API server fills their own defaults.

    The API server defaults a field only when its parent object exists; without this, a job that
    omits `training:` would be stored without any of the training defaults. Sections whose model default
    is None (`distill`, `prune`: their presence is the request) are left absent when omitted.
    """
    required = set(obj.get("required", []))
    for name, prop in obj.get("properties", {}).items():
        is_section = prop.get("type") == "object" and "properties" in prop
        if is_section and name not in required | absent and "required" not in prop and "default" not in prop:
            prop["default"] = {}


def _strip_defaults(node: Any) -> Any:
    """Status is written by the operator only: defaults there would only confuse readers."""
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(v) for v in node]
    return node


def model_schema(model: type, root: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), (root,))


# Once a job has launched, its checkpoints belong to the spec it launched with: a retry resumes from them,
# so changing the model, data, training, resources, storage, checkpointing or exports mid-run would resume
# a different run from them. The API server refuses such edits (a transition rule, evaluated on update);
# runPolicy (suspend, backoffLimit, deadlines, queue) stays editable and applies at once.
LOCKED_AFTER_LAUNCH = ("model", "dataset", "training", "resources", "storage", "checkpoint", "export")


def _unchanged(field: str) -> str:
    return (
        f"(has(self.spec.{field}) == has(oldSelf.spec.{field}) && "
        f"(!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field}))"
    )


def spec_lock_rule() -> dict[str, str]:
    launched = "has(oldSelf.status) && has(oldSelf.status.attempt) && oldSelf.status.attempt > 0"
    return {
        "rule": f"!({launched}) || (" + " && ".join(_unchanged(f) for f in LOCKED_AFTER_LAUNCH) + ")",
        "message": (
            "spec." + ", spec.".join(LOCKED_AFTER_LAUNCH[:-1]) + f" and spec.{LOCKED_AFTER_LAUNCH[-1]} cannot "
            "change once the job has launched (its checkpoints were made with them); only spec.runPolicy can. "
            "To run with other settings, create a new FineTuneJob."
        ),
        "reason": "FieldValueForbidden",
    }


def build_crd() -> dict[str, Any]:
    """The complete apiextensions.k8s.io/v1 CRD for FineTuneJob."""
    spec_schema = model_schema(FineTuneJobSpec, "spec")
    status_schema = _strip_defaults(model_schema(FineTuneJobStatus, "status"))
    status_schema["description"] = "Observed state, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "edgetune", "app.kubernetes.io/component": "crd"},
            "annotations": {"edgetune.dev/generated-by": "edgetune crd (from edgetune_operator.api)"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["ftj"],
                "categories": ["edgetune"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "description": (
                                "FineTuneJob fine-tunes a model with Ray Train DDP on KubeRay, checkpoints to "
                                "object storage, and exports edge artifacts (ONNX, int8) checked against budgets."
                            ),
                            "type": "object",
                            "required": ["spec"],
                            "x-kubernetes-validations": [spec_lock_rule()],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated by `edgetune crd` from edgetune_operator/api.py. Do not edit: regenerate.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120, allow_unicode=True)
