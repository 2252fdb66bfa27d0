"""Static checks of edgetune's Dockerfiles, for defects a real build found.

On kind, every commit rebuilt the trainer's 6.5 GB dependency layer, and every node pulled it again: the
per-commit REVISION build argument was declared before the install step, and a build argument is part of
the cache key of every RUN that follows its declaration (classic builder and BuildKit alike).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO_ROOT / "operator" / "Dockerfile", REPO_ROOT / "trainer" / "Dockerfile"]
PER_BUILD_ARGS = ("VERSION", "REVISION", "CREATED")  # change with every commit or build


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    parts = [[*text.split(None, 1), ""] for text in joined]
    return [(part[0].upper(), part[1]) for part in parts]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_per_build_arguments_come_after_the_last_run_of_their_stage(dockerfile: Path) -> None:
    stage: list[tuple[str, str]] = []
    for instruction in [*instructions(dockerfile), ("FROM", "")]:
        if instruction[0] == "FROM" and stage:
            runs = [i for i, (name, _) in enumerate(stage) if name == "RUN"]
            for i, (name, args) in enumerate(stage):
                declared = args.split("=", 1)[0].strip()
                if name == "ARG" and declared in PER_BUILD_ARGS and runs and i < runs[-1]:
                    pytest.fail(f"{dockerfile.relative_to(REPO_ROOT)}: ARG {declared} before a RUN busts its cache")
            stage = []
        stage.append(instruction)


def test_the_parser_sees_the_trainer_install_step() -> None:
    parsed = instructions(DOCKERFILES[1])
    assert sum(name == "RUN" for name, _ in parsed) >= 2
    assert ("ARG", "REVISION=unknown") in parsed
