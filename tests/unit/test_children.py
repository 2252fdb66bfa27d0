"""Which children a reconcile counts as the job's own: the ones its uid owns, through their owners."""

from __future__ import annotations

from typing import Any

from edgetune_operator.reconciler import Children


def obj(name: str, uid: str, owner: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "ownerReferences": [{"uid": owner}]}}


def test_only_the_children_of_this_uid_and_their_pods_count() -> None:
    children = Children(
        rayjobs=[obj("bert-a1", "r-old", "job-old"), obj("bert-a1", "r-new", "job-new")],
        export_jobs=[obj("bert-export-int8", "e-old", "job-old"), obj("bert-export-int8", "e-new", "job-new")],
        export_pods=[obj("p-old", "p1", "e-old"), obj("p-new", "p2", "e-new"), obj("p-stray", "p3", "other")],
    )
    mine = children.owned_by("job-new")
    assert [o["metadata"]["uid"] for o in mine.rayjobs] == ["r-new"]
    assert [o["metadata"]["uid"] for o in mine.export_jobs] == ["e-new"]
    assert [o["metadata"]["name"] for o in mine.export_pods] == ["p-new"]  # owned by the export Job, not the job


def test_objects_without_owners_are_nobodys() -> None:
    orphan = {"metadata": {"name": "bert-a1", "uid": "r"}}
    assert Children([orphan], [], []).owned_by("job").rayjobs == []
