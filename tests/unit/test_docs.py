"""The documentation builds: the MkDocs site with no warning, and README.md stays a first read whose links
all lead somewhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgetune_operator.api import document_problems

ROOT = Path(__file__).resolve().parents[2]
README_LIMIT_BYTES = 12 * 1024


def test_site_builds_strict(tmp_path: Path) -> None:
    """--strict turns every warning into a failure: a link to a missing page or anchor, a page left out of
    the navigation, a nav entry without its page."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "index.html").is_file()


def test_readme_is_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes: move reference material to docs/"


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://", t) and not t.startswith("#")]
    assert local, "README.md links to no page of docs/"
    missing = [t for t in local if t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def job_blocks() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [
        (f"{page.name}#{n}", block)
        for page in pages
        for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S))
        if "kind: FineTuneJob" in block
    ]


@pytest.mark.parametrize(("where", "block"), job_blocks(), ids=[where for where, _ in job_blocks()])
def test_jobs_shown_in_the_docs_are_valid(where: str, block: str) -> None:
    problems = document_problems(yaml.safe_load(block))
    assert not problems, f"{where}: {[str(p) for p in problems]}"
