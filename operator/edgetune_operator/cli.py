"""`edgetune`: the user's command line.

    edgetune validate FILE...   check FineTuneJob files against the API, listing every problem
    edgetune crd [-o PATH]      print (or write) the generated CustomResourceDefinition

It lives in the operator package because it speaks the whole FineTuneJob API (the operator's
models); it needs only pydantic and PyYAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgetune_operator.api import document_problems
from edgetune_operator.crdgen import render_crd_yaml
from edgetune_operator.documents import load_documents


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        for doc in load_documents(path):
            problems = doc.problems or document_problems(doc.data)
            if problems:
                failed += 1
                print(f"{doc.label}: invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''})")
                for problem in problems:
                    print(f"  - {problem}")
            else:
                print(f"{doc.label}: FineTuneJob {doc.data['metadata']['name']!r} is valid")
    return 1 if failed else 0


def cmd_crd(args: argparse.Namespace) -> int:
    text = render_crd_yaml()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetune", description="Kubernetes-native fine-tuning: FineTuneJob tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check FineTuneJob YAML files; exit 1 if any is invalid")
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML file(s), or - for standard input")
    validate.set_defaults(func=cmd_validate)

    crd = commands.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition generated from the API")
    crd.add_argument("-o", "--output", help="write to this file instead of standard output")
    crd.set_defaults(func=cmd_crd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
