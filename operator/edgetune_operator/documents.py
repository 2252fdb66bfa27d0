"""Read FineTuneJob YAML files into documents, turning YAML mistakes into located problems."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgetune_trainer.problems import Problem


@dataclass
class LoadedDocument:
    """One YAML document of a file, or the problems that kept it from loading."""

    source: str
    index: int
    data: Any = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.source if self.index == 0 else f"{self.source} (document {self.index + 1})"


def read_text(path: str) -> str:
    """A file's text, or standard input for '-'."""
    return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")


def load_documents(path: str) -> list[LoadedDocument]:
    """Every non-empty YAML document in `path`; a file that cannot be read or parsed gives one document
    carrying the problem, so callers report it like any other validation problem."""
    source = "<stdin>" if path == "-" else path
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as err:
        return [LoadedDocument(source, 0, problems=[Problem("", f"cannot read the file: {err}")])]
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(err, "problem", None) or str(err)
        return [LoadedDocument(source, 0, problems=[Problem("", f"YAML syntax error at {where}{reason}")])]
    if not documents:
        return [LoadedDocument(source, 0, problems=[Problem("", "the file holds no YAML document")])]
    return [LoadedDocument(source, index, data=doc) for index, doc in enumerate(documents)]
