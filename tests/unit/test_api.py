"""The FineTuneJob API: defaults, field-path messages, cross-field rules, trainer config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from edgetune_operator.api import document_problems, parse_job, spec_problems, to_trainer_config
from edgetune_trainer.config import load_train_config
from edgetune_trainer.problems import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def minimal_job() -> dict:
    return {
        "apiVersion": "edgetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo"},
        "spec": {
            "model": {"source": "hf://bert-base-uncased", "task": "text-classification", "numLabels": 2},
            "dataset": {"source": "s3://data/train.jsonl"},
        },
    }


def messages(document: dict) -> dict[str, str]:
    return {p.path: p.message for p in document_problems(document)}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert document_problems(document) == []
    assert parse_job(document).metadata.name == path.stem


def test_the_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == [
        "bert-imdb.yaml",
        "minilm-sentiment-kind.yaml",
        "minilm-sentiment-scratch.yaml",
        "minilm-sentiment.yaml",
        "quickstart-kind.yaml",
        "quickstart.yaml",
        "resnet-cifar10.yaml",
    ]


def test_defaults_are_filled() -> None:
    job = parse_job(minimal_job())
    assert job.spec.training.epochs == 1
    assert job.spec.training.precision == "fp32"
    assert job.spec.resources.workers == 1
    assert job.spec.resources.memory_per_worker == "4Gi"
    assert job.spec.checkpoint.keep == 3
    assert job.spec.run_policy.backoff_limit == 3
    assert job.spec.dataset.holdout_fraction == 0.1
    assert job.spec.model.label_names() == ["0", "1"]


def test_round_trip_uses_camel_case_and_drops_unset() -> None:
    spec = parse_job(minimal_job()).spec.to_dict()
    assert spec["training"]["batchSizePerWorker"] == 16
    assert "everySteps" not in spec["checkpoint"]
    assert spec_problems(spec) == []


@pytest.mark.parametrize(
    ("section", "patch", "path", "fragment"),
    [
        ("model", {"freeze": "layers:-1"}, "spec.model.freeze", "layers:N"),
        ("model", {"freeze": "layers:0"}, "spec.model.freeze", "N >= 1"),
        ("model", {"numLabels": 1}, "spec.model.numLabels", "greater than or equal to 2"),
        ("model", {"source": "gs://bucket/model"}, "spec.model.source", "not supported"),
        ("model", {"source": "torchvision://resnet18"}, "spec.model.task", "image-classification"),
        ("model", {"labels": ["a", "b", "c"]}, "spec.model.labels", "numLabels is 2"),
        (
            "model",
            {"source": "torchvision://resnet18@DEFAULT", "task": "image-classification", "pretrained": False},
            "spec.model.pretrained",
            "keep one of the two",
        ),
        ("dataset", {"source": "s3:///train.jsonl"}, "spec.dataset.source", "no bucket"),
        ("dataset", {"source": "s3://Bad_Bucket/x"}, "spec.dataset.source", "not a valid bucket name"),
        ("dataset", {"source": "s3://bucket/../../etc/passwd"}, "spec.dataset.source", "'..'"),
        ("dataset", {"source": "hf://imdb:te st"}, "spec.dataset.source", "split"),
        (
            "dataset",
            {"evalSource": "s3://data/e.jsonl", "validationFraction": 0.2},
            "spec.dataset.validationFraction",
            "not both",
        ),
        ("training", {"epochs": 0, "maxSteps": 0}, "spec.training.epochs", "both 0"),
        ("training", {"learningRate": -1}, "spec.training.learningRate", "greater than 0"),
        ("training", {"batchSizePerWorker": "8"}, "spec.training.batchSizePerWorker", "whole number"),
        ("training", {"precison": "bf16"}, "spec.training.precison", "did you mean 'precision'"),
        ("training", {"optimizer": "adam"}, "spec.training.optimizer", "'adamw' or 'sgd'"),
        ("training", {"precision": "fp16"}, "spec.training.precision", "needs GPUs"),
        ("resources", {"memoryPerWorker": "lots"}, "spec.resources.memoryPerWorker", "quantity"),
        ("resources", {"nodeSelector": {"bad key!": "x"}}, "spec.resources.nodeSelector", "label key"),
        ("resources", {"image": "img; rm -rf /"}, "spec.resources.image", "image reference"),
        ("storage", {"uri": "s3:///prefix"}, "spec.storage.uri", "no bucket"),
        ("storage", {"uri": "/tmp/x"}, "spec.storage.uri", "s3://BUCKET"),
        ("storage", {"endpoint": "minio:9000"}, "spec.storage.endpoint", "http(s)://"),
        ("storage", {"credentialsSecret": "My_Secret"}, "spec.storage.credentialsSecret", "DNS-1123"),
        ("checkpoint", {"everySteps": 10, "everyEpochs": 1}, "spec.checkpoint.everySteps", "not both"),
        ("runPolicy", {"queueName": "a b"}, "spec.runPolicy.queueName", "label value"),
        ("runPolicy", {"backoffLimit": 10**12}, "spec.runPolicy.backoffLimit", "less than or equal to 100"),
    ],
)
def test_each_problem_names_its_field(section: str, patch: dict, path: str, fragment: str) -> None:
    document = minimal_job()
    document["spec"].setdefault(section, {}).update(patch)
    found = messages(document)
    assert path in found, found
    assert fragment in found[path]


def test_gpus_make_fp16_and_bf16_fine() -> None:
    document = minimal_job()
    document["spec"]["training"] = {"precision": "fp16"}
    document["spec"]["resources"] = {"gpusPerWorker": 1}
    assert document_problems(document) == []
    document["spec"]["training"] = {"precision": "bf16"}
    document["spec"]["resources"] = {"gpusPerWorker": 0}
    assert document_problems(document) == []


def test_export_target_rules() -> None:
    document = minimal_job()
    document["spec"]["export"] = [
        {"name": "edge", "format": "torchscript", "quantize": "int8"},
        {"name": "edge"},
        {"name": "x" * 41},
        {"name": "ok", "tolerations": [{"operator": "Equal", "value": "v"}]},
    ]
    found = messages(document)
    assert "needs format: onnx" in found["spec.export[0].quantize"]
    assert "at most 40 characters" in found["spec.export[2].name"]
    assert "must be Exists when key is empty" in found["spec.export[3].tolerations[0].operator"]


def test_every_problem_is_reported_at_once() -> None:
    document = minimal_job()
    document["metadata"]["name"] = "Not_Valid"
    document["spec"]["model"]["freeze"] = "layers:-1"
    document["spec"]["dataset"]["source"] = "s3://"
    document["spec"]["training"] = {"learningRate": 0, "optimizer": "rmsprop"}
    document["spec"]["export"] = [{"name": "a"}, {"name": "a"}]
    paths = set(messages(document))
    assert {
        "metadata.name",
        "spec.model.freeze",
        "spec.dataset.source",
        "spec.training.learningRate",
        "spec.training.optimizer",
    } <= paths


def test_cross_section_problems_are_all_reported() -> None:
    document = minimal_job()
    document["spec"]["training"] = {"precision": "fp16"}
    document["spec"]["export"] = [{"name": "a"}, {"name": "a"}]
    assert set(messages(document)) == {"spec.training.precision", "spec.export[1].name"}


def with_distill(task: str = "text-classification", **target: object) -> dict:
    document = minimal_job()
    if task == "image-classification":
        document["spec"]["model"] = {"source": "torchvision://resnet18", "task": task, "numLabels": 10}
    document["spec"]["export"] = [{"name": "edge", "quantize": "int8", **target}]
    return document


def test_a_distill_target_is_valid_and_keeps_its_defaults() -> None:
    job = parse_job(with_distill(distill={"student": {"layers": 2}, "prune": {"heads": 0.5}}))
    distill = job.spec.export[0].distill
    assert distill is not None and distill.student.layers == 2 and distill.prune is not None
    assert (distill.temperature, distill.soft_target_weight, distill.epochs) == (2.0, 0.7, 3)
    named = parse_job(with_distill("image-classification", distill={"student": {"source": "torchvision://resnet18"}}))
    assert named.spec.export[0].distill is not None


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        (with_distill(distill={}), "spec.export[0].distill.student", "names no smaller model"),
        (with_distill(distill={"prune": {}}), "spec.export[0].distill.prune.heads", "removes nothing"),
        (
            with_distill(distill={"student": {"layers": 2, "source": "hf://prajjwal1/bert-tiny"}}),
            "spec.export[0].distill.student.source",
            "not both",
        ),
        (
            with_distill(distill={"student": {"source": "hf://x/y"}, "prune": {"ffn": 0.5}}),
            "spec.export[0].distill.prune",
            "not to a named student",
        ),
        (with_distill(distill={"student": {"layers": 0}}), "spec.export[0].distill.student.layers", ""),
        (
            with_distill(distill={"student": {"layers": 1}, "temperature": 0.1}),
            "spec.export[0].distill.temperature",
            "",
        ),
        (
            with_distill(distill={"student": {"layers": 1}, "epochs": 0}),
            "spec.export[0].distill.epochs",
            "set maxSteps",
        ),
        (
            with_distill(format="torchscript", quantize="none", distill={"student": {"layers": 1}}),
            "spec.export[0].distill",
            "needs format: onnx",
        ),
        (
            with_distill("image-classification", distill={"student": {"layers": 2}}),
            "spec.export[0].distill.student.layers",
            "name a smaller model in student.source",
        ),
        (
            with_distill(distill={"student": {"hiddenSize": 64, "embeddingRank": 16}}),
            "spec.export[0].distill.student.embeddingRank",
            "hiddenSize student",
        ),
        (
            with_distill(distill={"student": {"source": "hf://x/y"}, "hiddenWeight": 1.0}),
            "spec.export[0].distill.hiddenWeight",
            "a cut of the teacher",
        ),
        (
            with_distill("image-classification", distill={"student": {"source": "torchvision://x"}, "augment": {}}),
            "spec.export[0].distill.augment",
            "text models only",
        ),
        (
            with_distill(distill={"student": {"layers": 1}, "augment": {"probability": 0.0}}),
            "spec.export[0].distill.augment.probability",
            "",
        ),
        (
            with_distill("image-classification", distill={"student": {"embeddingRank": 16}}),
            "spec.export[0].distill.student.embeddingRank",
            "name a smaller model in student.source",
        ),
        (
            with_distill("image-classification", distill={"student": {"source": "hf://x/y"}}),
            "spec.export[0].distill.student.source",
            "is a text model",
        ),
    ],
)
def test_a_distill_section_that_cannot_work_is_refused_with_its_reason(document: dict, path: str, words: str) -> None:
    found = messages(document)
    assert path in found, found
    assert words in found[path]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ([], ""),
        ({"kind": "FineTuneJob"}, "apiVersion"),
        ({**minimal_job(), "kind": "RayJob"}, "kind"),
        ({**minimal_job(), "metadata": {"name": "x" * 64}}, "metadata.name"),
        ({**minimal_job(), "spec": None}, "spec"),
        ({**minimal_job(), "spec": {"model": "bert"}}, "spec.model"),
    ],
)
def test_document_level_problems(document: object, path: str) -> None:
    problems = document_problems(document)
    assert problems
    assert path in {p.path for p in problems}


def test_parse_job_raises_config_error_listing_everything() -> None:
    document = minimal_job()
    document["spec"]["training"] = {"epochs": -1, "seed": "x"}
    with pytest.raises(ConfigError) as err:
        parse_job(document)
    text = str(err.value)
    assert text.startswith("FineTuneJob 'demo' is invalid (2 problems)")
    assert "spec.training.epochs" in text
    assert "spec.training.seed" in text


def test_to_trainer_config_carries_scaling_and_identity() -> None:
    document = minimal_job()
    document["spec"]["resources"] = {
        "workers": 4,
        "gpusPerWorker": 2,
        "cpusPerWorker": 8,
        "memoryPerWorker": "64Gi",
    }
    document["spec"]["storage"] = {"uri": "s3://bucket/jobs"}
    config = to_trainer_config(parse_job(document).spec, "demo", "team-a")
    assert (config.name, config.namespace) == ("demo", "team-a")
    assert (config.scaling.workers, config.scaling.gpus_per_worker, config.scaling.cpus_per_worker) == (
        4,
        2,
        8.0,
    )
    # The trainer's own file format round-trips through its loader.
    assert load_train_config(config.to_dict()) == config


def test_trainer_config_needs_storage_and_refuses_unknown_fields() -> None:
    config = {
        "name": "demo",
        "model": {"source": "./m", "task": "text-classification", "numLabels": 2},
        "dataset": {"source": "./d.jsonl"},
        "resources": {"workers": 2},
    }
    with pytest.raises(ConfigError) as err:
        load_train_config(config)
    paths = {p.path for p in err.value.problems}
    assert paths == {"resources"}
    del config["resources"]
    with pytest.raises(ConfigError) as err:
        load_train_config(config)
    assert [p.path for p in err.value.problems] == ["storage.uri"]


def test_models_are_immutable() -> None:
    spec = parse_job(minimal_job()).spec
    with pytest.raises(Exception, match="frozen"):
        spec.training.epochs = 5  # type: ignore[misc]
    assert copy.deepcopy(spec) == spec
