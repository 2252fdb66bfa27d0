"""Turn validation failures into messages a person can act on.

Pydantic's errors carry a location tuple and a terse message; users of a YAML file want
`spec.training.learningRate: must be greater than 0 (got -1)`. This module does that
translation and nothing else; it imports only pydantic and the standard library, so the
operator image (no torch) and the trainer share it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

# Error type used by model validators that find several cross-field problems at once:
# its ctx["problems"] holds (relative location, message) pairs, expanded by `from_validation_error`.
MULTI_PROBLEM_TYPE = "edgetune_problems"
_MAX_SHOWN_INPUT = 60


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (a dotted field path) and what, in words."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """A document failed validation; carries every problem found, not only the first."""

    def __init__(self, what: str, problems: Sequence[Problem]) -> None:
        self.what = what
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        lines = [f"{self.what} is invalid ({count} problem{'s' if count != 1 else ''}):"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def format_path(loc: Iterable[str | int]) -> str:
    """('spec', 'export', 0, 'name') -> 'spec.export[0].name'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def show_input(value: Any) -> str:
    """A short, single-line, escape-safe rendering of a user's input for an error message."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    if len(text) > _MAX_SHOWN_INPUT:
        text = text[: _MAX_SHOWN_INPUT - 3] + "..."
    return text


_TYPE_WORDS = {
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string (quote it in YAML)",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of fields",
    "model_attributes_type": "must be a mapping of fields",
    "list_type": "must be a list",
    "finite_number": "must be a finite number",
}


def _message(error: dict[str, Any], known_fields: Sequence[str]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        name = str(error["loc"][-1]) if error["loc"] else ""
        close = difflib.get_close_matches(name, known_fields, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown field{hint}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')} (got {show_input(given)})"
    if kind in _TYPE_WORDS:
        return f"{_TYPE_WORDS[kind]} (got {show_input(given)})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    text = str(error["msg"]).replace("Input should be", "must be").replace("String should", "must")
    text = text.replace("List should", "must").replace("Value should", "must")
    if given is not None and not isinstance(given, dict | list):
        text += f" (got {show_input(given)})"
    return text


def from_validation_error(
    err: ValidationError, prefix: Sequence[str | int] = (), known_fields: Sequence[str] = ()
) -> list[Problem]:
    """Every error in `err` as a Problem whose path starts with `prefix`."""
    problems: list[Problem] = []
    for error in err.errors(include_url=False):
        loc = (*prefix, *error["loc"])
        if error["type"] == MULTI_PROBLEM_TYPE:
            for sub_loc, message in error["ctx"]["problems"]:
                problems.append(Problem(format_path((*loc, *sub_loc)), message))
        else:
            problems.append(Problem(format_path(loc), _message(error, known_fields)))
    return problems
