"""The generated CRD: no drift from the models, structural, and in agreement with the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edgetune_operator.api import document_problems
from edgetune_operator.apidocs import render_reference
from edgetune_operator.crdgen import CRD_FILENAME, build_crd, render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / CRD_FILENAME

# Keywords a structural schema may carry (apiextensions.k8s.io/v1 JSONSchemaProps we use).
ALLOWED_KEYWORDS = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "default",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",  # the root only: spec fields locked once launched (crdgen.spec_lock_rule)
}


def schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        nodes += walk(sub, f"{path}.{name}")
    if "items" in node:
        nodes += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        nodes += walk(node["additionalProperties"], f"{path}{{}}")
    return nodes


def test_checked_in_crd_matches_the_models() -> None:
    assert CRD_PATH.read_text() == render_crd_yaml(), "crds/ drifted: run `edgetune crd -o crds/" + CRD_FILENAME + "`"


def test_reference_page_matches_the_models() -> None:
    page = ROOT / "docs" / "reference.md"
    assert page.read_text() == render_reference(), "docs/reference.md drifted: run `make crd`"


def test_reference_page_lists_every_spec_field() -> None:
    page = render_reference()
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for section, node in spec["properties"].items():
        node = node.get("items", node)
        for field in node.get("properties", {}):
            assert f"### `spec.{section}" in page, f"spec.{section} has no table"
            assert f"| `{field}`" in page, f"spec.{section}.{field} is missing"


@pytest.mark.parametrize(("path", "node"), walk(schema()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_node_is_structural(path: str, node: dict[str, Any]) -> None:
    assert "type" in node, f"{path} has no type"
    assert set(node) <= ALLOWED_KEYWORDS, f"{path} uses {set(node) - ALLOWED_KEYWORDS}"
    assert not ("properties" in node and "additionalProperties" in node)
    if "exclusiveMinimum" in node:
        assert node["exclusiveMinimum"] is True and "minimum" in node
    if node["type"] == "object" and path not in ("", ".metadata"):
        assert "properties" in node or "additionalProperties" in node, f"{path}: an object with no fields"


def test_no_preserve_unknown_fields_anywhere() -> None:
    assert "x-kubernetes-preserve-unknown-fields" not in CRD_PATH.read_text()


def test_every_default_is_valid_under_its_own_schema() -> None:
    checked = 0
    for _, node in walk(schema()):
        if "default" in node:
            jsonschema.Draft4Validator(node).validate(node["default"])
            checked += 1
    assert checked > 20


def test_optional_sections_default_to_empty_objects() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    for section in ("training", "resources", "storage", "checkpoint", "runPolicy"):
        assert spec[section]["default"] == {}, section
    assert "default" not in spec["model"]


def test_sections_whose_presence_is_the_request_stay_absent_when_omitted() -> None:
    """A `distill: {}` filled in by the API server would ask every export for a student (and an empty
    `prune` fails validation): sections whose model default is None get no default."""
    target = schema()["properties"]["spec"]["properties"]["export"]["items"]["properties"]
    distill = target["distill"]
    assert "default" not in distill
    assert "default" not in distill["properties"]["prune"] and "default" not in distill["properties"]["augment"]
    assert distill["properties"]["student"]["default"] == {}  # a default_factory section: filled as before


def test_status_has_no_defaults_and_keyed_lists() -> None:
    status = schema()["properties"]["status"]
    assert not [p for p, n in walk(status) if "default" in n]
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert schema()["properties"]["spec"]["properties"]["export"]["x-kubernetes-list-map-keys"] == ["name"]


def test_api_surface() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "finetunejobs.edgetune.dev"
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"]]
    assert columns == ["PHASE", "PROGRESS", "LOSS", "ATTEMPT", "AGE"]


def test_printer_columns_point_at_real_fields() -> None:
    root = schema()
    for column in build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]:
        node = root
        parts = column["jsonPath"].strip(".").split(".")
        if parts[0] == "metadata":
            continue
        for part in parts:
            node = node["properties"][part]
        assert node["type"] == column["type"] or (node["type"], column["type"]) == ("number", "number")


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_pass_the_crd_schema(example: Path) -> None:
    document = yaml.safe_load(example.read_text())
    jsonschema.Draft4Validator(schema()).validate(document)


def test_schema_and_models_agree_on_bad_values() -> None:
    """Field-level rules are in both places: what the API server refuses, `edgetune validate` refuses."""
    validator = jsonschema.Draft4Validator(schema())
    base = yaml.safe_load((ROOT / "examples" / "bert-imdb.yaml").read_text())
    cases = [
        ("training", "learningRate", 0),
        ("training", "precision", "fp64"),
        ("training", "batchSizePerWorker", 0),
        ("model", "freeze", "layers:0"),
        ("resources", "memoryPerWorker", "1 GB"),
        ("runPolicy", "backoffLimit", 101),
        ("checkpoint", "keep", 0),
    ]
    for section, field, value in cases:
        document = yaml.safe_load(yaml.safe_dump(base))
        document["spec"][section][field] = value
        assert list(validator.iter_errors(document)), (section, field, value)
        assert document_problems(document), (section, field, value)
