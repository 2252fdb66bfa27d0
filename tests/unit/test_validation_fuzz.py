"""Hypothesis: generated invalid and hostile documents always give clear problems, never an exception."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api import minimal_job

from edgetune_operator.api import document_problems
from edgetune_trainer.problems import Problem

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["$(reboot)", "; rm -rf /", "../../etc/passwd", "s3://../x", "\x00\n\t", "名前", "a" * 300]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def leaf_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in leaf_paths(value, (*prefix, key))] or [prefix]
    if isinstance(node, list):
        return [p for index, value in enumerate(node) for p in leaf_paths(value, (*prefix, index))] or [prefix]
    return [prefix]


def rich_job() -> dict:
    job = minimal_job()
    job["spec"].update(
        training={"epochs": 2, "learningRate": 0.001, "precision": "bf16"},
        resources={"workers": 2, "memoryPerWorker": "2Gi", "nodeSelector": {"pool": "gpu"}},
        storage={"uri": "s3://bucket/jobs", "endpoint": "http://minio:9000", "credentialsSecret": "s3"},
        checkpoint={"everySteps": 10},
        export=[{"name": "edge", "quantize": "int8", "budgets": {"maxSizeMB": 5.0}}],
        runPolicy={"backoffLimit": 2, "queueName": "team-a"},
    )
    return job


def set_path(document: dict, path: tuple, value: Any) -> None:
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def assert_clear(problems: list[Problem]) -> None:
    for problem in problems:
        assert isinstance(problem, Problem)
        assert problem.message.strip()
        assert "Traceback" not in problem.message
        assert len(str(problem)) < 2000


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=JSON_VALUES)
def test_arbitrary_documents_never_raise(document: Any) -> None:
    problems = document_problems(document)
    assert problems, "a random value is never a valid FineTuneJob"
    assert_clear(problems)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_one_corrupted_field_is_reported_at_its_path(data: st.DataObject) -> None:
    document = rich_job()
    path = data.draw(st.sampled_from(leaf_paths(document["spec"])))
    value = data.draw(JSON_VALUES)
    corrupted = copy.deepcopy(document)
    set_path(corrupted["spec"], path, value)
    problems = document_problems(corrupted)
    assert_clear(problems)
    if problems:
        # A problem is reported inside the corrupted section, never somewhere unrelated.
        section = f"spec.{path[0]}"
        assert any(p.path.startswith(section) for p in problems), (path, value, problems)


@settings(max_examples=200, deadline=None)
@given(key=st.text(min_size=1, max_size=20).filter(lambda k: k not in {"model", "dataset"}), value=JSON_VALUES)
def test_unknown_keys_are_named(key: str, value: Any) -> None:
    document = rich_job()
    document["spec"]["training"][key] = value
    known = {
        "epochs",
        "maxSteps",
        "batchSizePerWorker",
        "learningRate",
        "optimizer",
        "weightDecay",
        "warmupRatio",
        "gradientAccumulation",
        "precision",
        "seed",
    }
    problems = document_problems(document)
    assert_clear(problems)
    if key not in known:
        assert f"spec.training.{key}" in {p.path for p in problems}


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=80))
def test_hostile_names_are_rejected_or_dns_labels(name: str) -> None:
    document = rich_job()
    document["metadata"]["name"] = name
    problems = document_problems(document)
    assert_clear(problems)
    if not problems:
        assert len(name) <= 63
        assert all(ch.isascii() and (ch.isdigit() or ch.islower() or ch == "-") for ch in name)
