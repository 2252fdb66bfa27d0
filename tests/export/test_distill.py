"""Students and structured pruning on a real trained BERT, and the search across candidates on real ONNX
Runtime: what the distillation RayJob starts from and what the export of a distill target publishes.
(The distillation's Ray Train run itself is in tests/run: `edgetune run` with a distill target.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from export_support import FAST, TEXT_LABELS, Trained, target

from edgetune_trainer.config import DistillSpec
from edgetune_trainer.export.candidates import choose, export_candidates
from edgetune_trainer.model.artifact import ArtifactError
from edgetune_trainer.model.loading import LoadedModel, ModelLoadError, load_artifact, save_artifact
from edgetune_trainer.model.preprocess import encode_texts
from edgetune_trainer.model.prune import prune_encoder
from edgetune_trainer.model.structure import (
    FactorizedEmbedding,
    encoder_layers,
    factorize_embeddings,
    structure_of,
)
from edgetune_trainer.model.student import build_student, kept_layers, student_problem
from edgetune_trainer.training.distill import distillation_loss, hidden_state_loss, hidden_weight_of

pytestmark = [pytest.mark.export]


def logits(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    encoded = encode_texts(loaded.tokenizer, texts, 32)
    loaded.model.eval()
    with torch.no_grad():
        return loaded.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits


def student_of(trained: Trained, **spec: object) -> tuple[LoadedModel, dict]:
    return build_student(trained.loaded, DistillSpec.model_validate(spec))


def save_student(student: LoadedModel, record: dict, trained: Trained, folder: Path) -> Path:
    reshaped = "pruned" in record or "factorized" in record  # as the distillation's worker records it
    extra = {"structure": structure_of(student.model)} if reshaped else {}
    save_artifact(
        student,
        folder,
        task="text-classification",
        labels=TEXT_LABELS,
        preprocessing=trained.prep,
        extra={**extra, "distill": {"student": record}},
    )
    return folder


def test_kept_layers_are_evenly_spaced_and_end_with_the_last() -> None:
    assert kept_layers(6, 2) == [2, 5] and kept_layers(6, 3) == [1, 3, 5] and kept_layers(6, 1) == [5]
    assert kept_layers(12, 12) == list(range(12))
    with pytest.raises(ModelLoadError, match="only 6 layers"):
        kept_layers(6, 7)


MINILM_CONFIG = {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12}


@pytest.mark.parametrize(
    ("student", "problem"),
    [
        ({"layers": 2, "embeddingRank": 96}, None),
        ({"layers": 7}, "the teacher has only 6 layers"),
        ({"hiddenSize": 100}, "multiple of the teacher's attention head size (32)"),
        ({"layers": 1, "embeddingRank": 384}, "below the teacher's hidden size (384)"),
        ({"source": "hf://org/small"}, None),
    ],
)
def test_an_impossible_student_is_named_before_any_worker_starts(student: dict, problem: str | None) -> None:
    found = student_problem(DistillSpec.model_validate({"student": student}), MINILM_CONFIG)
    assert found is None if problem is None else problem in (found or "")
    other = student_problem(DistillSpec.model_validate({"student": {"layers": 1}}), {"model_type": "resnet"})
    assert other is not None and "name a smaller model in student.source" in other


def test_a_cut_keeping_every_layer_is_the_teacher_and_a_one_layer_cut_copies_the_last(text_model: Trained) -> None:
    texts = [text for text, _ in text_model.examples[:16]]
    whole, record = student_of(text_model, student={"layers": 2})
    assert torch.allclose(logits(whole, texts), logits(text_model.loaded, texts), atol=1e-5)
    assert record["initialisation"] == "teacher" and record["keptLayers"] == [1, 2]
    one, record = student_of(text_model, student={"layers": 1})
    assert record["keptLayers"] == [2] and len(encoder_layers(one.model)) == 1
    last = encoder_layers(text_model.loaded.model)[1].state_dict()
    assert all(torch.equal(tensor, last[name]) for name, tensor in encoder_layers(one.model)[0].state_dict().items())
    assert len(encoder_layers(text_model.loaded.model)) == 2  # the teacher is untouched


def test_a_narrower_student_starts_from_random_weights_and_must_keep_whole_heads(text_model: Trained) -> None:
    narrow, record = student_of(text_model, student={"hiddenSize": 32})
    assert record["initialisation"] == "random" and narrow.model.config.hidden_size == 32
    assert narrow.model.config.num_attention_heads == 1  # the head size stays the teacher's 32
    with pytest.raises(ModelLoadError, match="multiple of the teacher's attention head size"):
        student_of(text_model, student={"hiddenSize": 48})


def test_pruning_removes_the_least_important_head_and_neurons(text_model: Trained) -> None:
    model = copy.deepcopy(text_model.loaded.model)
    first = encoder_layers(model)[0]
    size = first.attention.self.attention_head_size
    with torch.no_grad():  # head 1 of layer 0 contributes nothing: it must be the one removed
        first.attention.self.value.weight[size : 2 * size].zero_()
    before = sum(p.numel() for p in model.parameters())
    record = prune_encoder(model, heads=0.5, ffn=0.25)
    assert record["removedHeads"][0] == [1]
    assert record["structure"]["layers"] == [{"heads": 1, "ffn": 96}, {"heads": 1, "ffn": 96}]
    after = sum(p.numel() for p in model.parameters())
    assert record["parametersBefore"] == before > record["parametersAfter"] == after
    assert first.attention.self.query.out_features == size and first.attention.output.dense.in_features == size


def test_a_pruned_student_round_trips_through_its_artifact(text_model: Trained, tmp_path: Path) -> None:
    student, record = student_of(text_model, student={"layers": 1}, prune={"heads": 0.5, "ffn": 0.5})
    texts = [text for text, _ in text_model.examples[:16]]
    expected = logits(student, texts)
    folder = save_student(student, record, text_model, tmp_path / "student")
    loaded, header = load_artifact(folder)
    assert header["structure"] == {"layers": [{"heads": 1, "ffn": 64}]}
    assert torch.allclose(logits(loaded, texts), expected, atol=1e-6)
    # A header whose structure does not match the weights is refused, never silently re-initialised.
    header_file = folder / "edgetune-model.json"
    tampered = json.loads(header_file.read_text())
    tampered["structure"] = {"layers": [{"heads": 2, "ffn": 64}]}
    header_file.write_text(json.dumps(tampered))
    with pytest.raises(ArtifactError, match="does not match its recorded structure"):
        load_artifact(folder)


def test_a_factorized_vocabulary_at_full_rank_changes_nothing_and_round_trips(
    text_model: Trained, tmp_path: Path
) -> None:
    texts = [text for text, _ in text_model.examples[:16]]
    vocab, hidden = text_model.loaded.model.bert.embeddings.word_embeddings.weight.shape  # 49 x 64
    student, record = student_of(text_model, student={"layers": 2, "embeddingRank": vocab})
    assert record["factorized"]["energyKept"] == pytest.approx(1.0)
    assert torch.allclose(logits(student, texts), logits(text_model.loaded, texts), atol=1e-4)
    small, record = student_of(text_model, student={"layers": 1, "embeddingRank": 8})
    table = small.model.bert.embeddings.word_embeddings
    assert isinstance(table, FactorizedEmbedding) and table.rank == 8
    assert record["factorized"]["parametersAfter"] == vocab * 8 + 8 * hidden < vocab * hidden
    assert 0.0 < record["factorized"]["energyKept"] < 1.0
    expected = logits(small, texts)
    loaded, header = load_artifact(save_student(small, record, text_model, tmp_path / "factorized"))
    assert header["structure"] == {"layers": [{"heads": 2, "ffn": 128}], "embeddingRank": 8}
    assert torch.allclose(logits(loaded, texts), expected, atol=1e-6)
    with pytest.raises(ModelLoadError, match="must be below the hidden size"):
        factorize_embeddings(copy.deepcopy(text_model.loaded.model), hidden)


def test_pruning_an_image_model_is_refused_by_name(image_model: Trained) -> None:
    with pytest.raises(ModelLoadError, match="BERT-style encoders"):
        prune_encoder(image_model.loaded.model, heads=0.5, ffn=0.0)


def test_the_distillation_loss_mixes_soft_targets_and_labels() -> None:
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    hard = torch.nn.functional.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, 2.0, 0.0), hard)
    assert float(distillation_loss(teacher, teacher, labels, 2.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    soft = distillation_loss(student, teacher, labels, 4.0, 1.0)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(student / 4, -1), torch.softmax(teacher / 4, -1), reduction="batchmean"
    )
    assert torch.allclose(soft, 16 * kl, atol=1e-6)


def test_the_layer_loss_compares_each_pair_over_real_tokens_only() -> None:
    torch.manual_seed(0)
    student = [torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)]
    teacher = [torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 3, 4)]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    teacher[2][:, 2] = 100.0  # padding: never counted
    assert float(hidden_state_loss(student, teacher, [(1, 2)], mask)) == pytest.approx(1.0)
    assert float(hidden_state_loss(student, teacher, [(1, 1), (1, 2)], mask)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("spec", "weight"),
    [
        ({"student": {"layers": 2}}, 1.0),
        ({"prune": {"ffn": 0.5}}, 1.0),
        ({"student": {"layers": 2}, "hiddenWeight": 0.0}, 0.0),
        ({"student": {"layers": 2}, "hiddenWeight": 3.0}, 3.0),
        ({"student": {"hiddenSize": 32}}, 0.0),
        ({"student": {"source": "hf://x/y"}}, 0.0),
    ],
)
def test_layer_matching_is_on_for_cuts_of_the_teacher_only(spec: dict, weight: float) -> None:
    assert hidden_weight_of(DistillSpec.model_validate(spec)) == weight


def test_choose_takes_the_smallest_that_met_every_budget() -> None:
    entries = [
        {"name": "teacher-int8", "phase": "Succeeded", "sizeBytes": 100, "accuracyDrop": 0.1},
        {"name": "student", "phase": "Failed", "sizeBytes": 40, "accuracyDrop": 5.0},
        {"name": "student-int8", "phase": "Succeeded", "sizeBytes": 60, "accuracyDrop": 1.0},
        {"name": "other", "phase": "Succeeded", "sizeBytes": 60, "accuracyDrop": 0.5},
    ]
    assert choose(entries) == 3
    assert choose([{**e, "phase": "Failed"} for e in entries]) is None


def test_the_search_publishes_the_smallest_candidate_within_budget(text_model: Trained, tmp_path: Path) -> None:
    distill = {"student": {"layers": 1, "embeddingRank": 16}, "prune": {"heads": 0.5, "ffn": 0.5}}
    student, record = student_of(text_model, **distill)
    folder = save_student(student, record, text_model, tmp_path / "student")
    edge = target(quantize="int8", distill=distill, budgets={"maxAccuracyDrop": 100.0})
    out = tmp_path / "work" / "export"
    report = export_candidates(text_model.artifact, folder, edge, text_model.examples, out, options=FAST)
    assert [c["name"] for c in report.candidates] == ["teacher-int8", "student", "student-int8"]
    assert all(c["phase"] == "Succeeded" for c in report.candidates)
    sizes = {c["name"]: c["sizeBytes"] for c in report.candidates}
    assert sizes["student-int8"] < sizes["student"] and sizes["student-int8"] < sizes["teacher-int8"]
    assert report.succeeded and report.candidate == "student-int8" and report.size_bytes == sizes["student-int8"]
    # Every drop is from the teacher's torch accuracy, the student's own being another figure.
    teacher = report.candidates[0]
    assert report.reference_accuracy == pytest.approx(teacher["accuracy"] + teacher["accuracyDrop"] / 100, abs=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["candidate"] == "student-int8" and manifest["distill"]["spec"] == edge.distill.to_dict()
    assert manifest["distill"]["student"]["keptLayers"] == [2]
    assert (out / "model.onnx").is_file() and (out / "tokenizer").is_dir()
    status = report.to_status()
    assert status["candidate"] == "student-int8" and len(status["candidates"]) == 3

    # A size budget int8 alone cannot meet: the teacher-int8 candidate fails it, a student meets it.
    below_int8 = (sizes["teacher-int8"] - 1) / 1e6
    sized = target(quantize="int8", distill=distill, budgets={"maxSizeMB": below_int8, "maxAccuracyDrop": 100.0})
    small = export_candidates(text_model.artifact, folder, sized, text_model.examples, out, options=FAST)
    assert small.candidates[0]["phase"] == "Failed"
    assert small.candidates[0]["missedBudgets"] == ["maxSizeMB"]
    assert small.succeeded and small.candidate == "student-int8"

    tight = target(quantize="int8", distill=distill, budgets={"maxSizeMB": 0.001})
    failed = export_candidates(text_model.artifact, folder, tight, text_model.examples, out, options=FAST)
    assert not failed.succeeded and failed.candidate is None
    assert failed.message.startswith("no candidate met the budgets: teacher-int8: maxSizeMB missed")
    assert "student-int8: maxSizeMB missed" in failed.message
    published = json.loads((out / "manifest.json").read_text())
    assert published["phase"] == "Failed" and not (out / "model.onnx").exists()
    assert len(published["candidates"]) == 3


def test_the_word_swapper_swaps_whole_words_for_their_nearest_neighbours(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    from edgetune_trainer.model.augment import WordSwapper

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "great", "superb", "marvel"]
    words += ["##ous", "bad", "awful", "42", "plot"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    index = tokenizer.get_vocab()
    torch.manual_seed(0)
    table = torch.randn(len(words), 8)
    for word, twin in (("great", "superb"), ("bad", "awful"), ("the", "plot"), ("film", "was")):
        table[index[twin]] = table[index[word]] + 0.01 * torch.randn(8)
    seen = tokenizer("the film was great marvelous 42 bad")["input_ids"]
    swapper = WordSwapper.for_teacher(tokenizer, table, seen, neighbours=1)
    batch = tokenizer(
        ["the film was great marvelous 42 bad", "superb plot"], padding="max_length", max_length=12, return_tensors="pt"
    )["input_ids"]
    swapped = swapper.swap(batch, 1.0, torch.Generator().manual_seed(0))
    assert tokenizer.convert_ids_to_tokens(swapped[0].tolist())[:10] == [
        "[CLS]", "plot", "was", "film", "superb", "marvel", "##ous", "42", "awful", "[SEP]"
    ]  # fmt: skip
    # "marvel" goes on in "##ous": a swap would make a non-word; "42" is no word; specials and padding stay.
    assert torch.equal(swapped[1], batch[1])  # words the training data never had have no neighbours here
    assert torch.equal(swapper.swap(batch, 1.0, torch.Generator().manual_seed(0)), swapped)
    assert torch.equal(swapper.swap(batch, 0.05, torch.Generator().manual_seed(3))[1], batch[1])


def test_a_published_distill_export_is_reused_only_for_the_same_teacher_student_and_spec(tmp_path: Path) -> None:
    import hashlib

    from edgetune_trainer.config import StorageSpec
    from edgetune_trainer.local.exports import published_export
    from edgetune_trainer.storage.job import JobStorage

    storage = JobStorage(StorageSpec(uri=f"file://{tmp_path}"), "local", "job")
    (tmp_path / "local" / "job" / "students" / "edge" / "model").mkdir(parents=True)
    (tmp_path / "local" / "job" / "exports" / "edge").mkdir(parents=True)
    storage.write_bytes("model/edgetune-model.json", b'{"teacher": 1}')
    storage.write_bytes("students/edge/model/edgetune-model.json", b'{"student": 1}')
    edge = target(quantize="int8", distill={"student": {"layers": 1}})
    teacher = hashlib.sha256(b'{"teacher": 1}').hexdigest()
    manifest = {
        "phase": "Succeeded",
        "opset": 17,
        "budgets": [],
        "distill": {
            "spec": edge.distill.to_dict(),
            "teacher": {"headerSha256": teacher},
            "studentHeaderSha256": hashlib.sha256(b'{"student": 1}').hexdigest(),
        },
    }
    storage.write_bytes("exports/edge/manifest.json", json.dumps(manifest).encode())
    assert published_export(storage, edge, teacher) == manifest
    assert published_export(storage, target(quantize="int8", distill={"student": {"layers": 2}}), teacher) is None
    storage.write_bytes("students/edge/model/edgetune-model.json", b'{"student": 2}')  # distilled again
    assert published_export(storage, edge, teacher) is None
