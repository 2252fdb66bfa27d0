"""Real torch -> ONNX -> onnxruntime exports of trained tiny text and image models, with every check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_support import FAST, Trained, run_export, target

from edgetune_trainer.export.graph import consolidate_external_data, export_onnx
from edgetune_trainer.export.inference import ModelInputs, OrtRunner, TorchRunner, batched_logits, logits_module
from edgetune_trainer.export.pipeline import export_model
from edgetune_trainer.export.predict import ExportedClassifier
from edgetune_trainer.export.quantize import Int8Quantizer, SensitivitySearch, logit_error
from edgetune_trainer.export.report import ExportOptions
from edgetune_trainer.model.artifact import ArtifactError, sha256_file
from edgetune_trainer.model.loading import load_artifact
from edgetune_trainer.model.preprocess import encode_texts

pytestmark = pytest.mark.export


def torch_logits(trained: Trained, feeds: dict[str, np.ndarray]) -> np.ndarray:
    loaded, _ = load_artifact(trained.artifact)
    return TorchRunner(logits_module(loaded.model, trained.prep.kind))(feeds)


def labels_of(model: Path, trained: Trained) -> np.ndarray:
    feeds = ModelInputs(trained.prep, trained.loaded.tokenizer).encode([raw for raw, _ in trained.examples])
    return batched_logits(OrtRunner(model), feeds).argmax(axis=1)


def agreement_of(first: Path, second: Path, trained: Trained) -> float:
    """Share of eval examples on which two exported models predict the same label."""
    return float(np.mean(labels_of(first, trained) == labels_of(second, trained)))


def weight_bytes(model: Path) -> int:
    """Bytes of the model's initializers (its weights), without the graph structure."""
    graph = onnx.load(str(model)).graph
    return sum(onnx.numpy_helper.to_array(init).nbytes for init in graph.initializer)


def op_types(model: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(model), load_external_data=False).graph.node}


# --- fp32 ----------------------------------------------------------------------------------------


def test_text_fp32_onnx_matches_torch_at_any_batch_and_length(text_model: Trained, tmp_path: Path) -> None:
    report, manifest = run_export(text_model, tmp_path / "out")

    assert report.phase == "Succeeded", report.message
    assert report.graph_parity is not None and report.graph_parity.max_abs_logit_diff < 1e-4
    assert report.parity is not None and report.parity.label_agreement == 1.0 and report.parity.samples == 64
    assert report.torch_accuracy is not None and report.torch_accuracy > 0.85  # it learned
    assert abs(report.accuracy_drop or 0.0) < 1e-9
    # The dynamic axes: 3 texts at sequence length 16, where export traced 2 at 32.
    tokens = encode_texts(text_model.loaded.tokenizer, ["great fun", "boring and dull plot", "the film"], 16)
    feeds = {name: tensor.numpy() for name, tensor in tokens.items()}
    onnx_logits = OrtRunner(tmp_path / "out" / "model.onnx")(feeds)
    np.testing.assert_allclose(onnx_logits, torch_logits(text_model, feeds), atol=1e-4)

    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert next(op.version for op in model.opset_import if op.domain == "") == 17
    assert manifest["opset"] == 17 and manifest["exporter"] == "torchscript"
    assert [item["name"] for item in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["inputs"][0]["shape"] == ["batch", "sequence"]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    assert manifest["labels"] == ["negative", "positive"]
    assert manifest["preprocessing"] == {"kind": "text", "maxLength": 32, "tokenizer": "tokenizer"}
    assert manifest["sha256"] == sha256_file(tmp_path / "out" / "model.onnx")
    assert manifest["files"]["model.onnx"]["bytes"] == report.size_bytes
    assert any(name.startswith("tokenizer/") for name in manifest["files"])
    assert manifest["source"]["checkpoint"].endswith("checkpoint_000150") and manifest["source"]["step"] == 150
    assert manifest["source"]["headerSha256"] == sha256_file(text_model.artifact / "edgetune-model.json")
    latency = manifest["latencyMs"]
    assert latency["threads"] == 1 and latency["batchSize"] == 1 and latency["runs"] == 10
    assert 0 < latency["p50"] <= latency["p95"]
    assert report.to_status() == {
        "name": "edge",
        "phase": "Succeeded",
        "message": report.message,
        "sizeBytes": report.size_bytes,
        "latencyMs": round(report.latency_ms.p95_ms, 4),
        "accuracyDrop": 0.0,
    }


def test_image_fp32_onnx_matches_torch_at_any_batch(image_model: Trained, tmp_path: Path) -> None:
    report, manifest = run_export(image_model, tmp_path / "out", opset=13)

    assert report.phase == "Succeeded", report.message
    assert report.torch_accuracy is not None and report.torch_accuracy > 0.9
    assert report.parity is not None and report.parity.label_agreement == 1.0
    pixels = ModelInputs(image_model.prep).encode([image for image, _ in image_model.examples[:5]])
    np.testing.assert_allclose(
        OrtRunner(tmp_path / "out" / "model.onnx")(pixels), torch_logits(image_model, pixels), atol=1e-4
    )
    assert manifest["opset"] == 13
    assert manifest["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert manifest["preprocessing"]["kind"] == "image" and manifest["preprocessing"]["imageSize"] == 32
    assert not any(name.startswith("tokenizer/") for name in manifest["files"])


# --- int8 and fp16 -------------------------------------------------------------------------------


def test_text_int8_is_dynamic_smaller_and_agrees_with_fp32(text_model: Trained, tmp_path: Path) -> None:
    fp32, _ = run_export(text_model, tmp_path / "fp32")
    int8, manifest = run_export(text_model, tmp_path / "int8", quantize="int8")

    assert int8.phase == "Succeeded", int8.message
    assert int8.size_bytes is not None and fp32.size_bytes is not None
    # A toy BERT's graph structure weighs as much as its weights: the weights are what int8 shrinks 4x.
    assert int8.size_bytes < 0.6 * fp32.size_bytes
    assert weight_bytes(tmp_path / "int8" / "model.onnx") < 0.3 * weight_bytes(tmp_path / "fp32" / "model.onnx")
    assert agreement_of(tmp_path / "fp32" / "model.onnx", tmp_path / "int8" / "model.onnx", text_model) >= 0.95
    quantization = manifest["quantization"]
    assert quantization["mode"] == "int8" and quantization["method"] == "dynamic"
    assert "run time" in quantization["reason"]
    assert quantization["keptFp32Layers"] == [] and "accuracyAware" not in quantization
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= op_types(tmp_path / "int8" / "model.onnx")


def test_image_int8_is_static_smaller_and_agrees_with_fp32(image_model: Trained, tmp_path: Path) -> None:
    fp32, _ = run_export(image_model, tmp_path / "fp32")
    int8, manifest = run_export(image_model, tmp_path / "int8", quantize="int8")

    assert int8.phase == "Succeeded", int8.message
    assert int8.size_bytes is not None and fp32.size_bytes is not None
    assert int8.size_bytes < 0.3 * fp32.size_bytes
    assert agreement_of(tmp_path / "fp32" / "model.onnx", tmp_path / "int8" / "model.onnx", image_model) >= 0.95
    quantization = manifest["quantization"]
    assert quantization["method"] == "static" and quantization["perChannel"] is True
    assert quantization["calibrationSamples"] == 64
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(tmp_path / "int8" / "model.onnx")


def test_fp16_halves_the_model_and_keeps_float32_io(image_model: Trained, tmp_path: Path) -> None:
    fp32, _ = run_export(image_model, tmp_path / "fp32")
    fp16, manifest = run_export(image_model, tmp_path / "fp16", quantize="fp16")

    assert fp16.phase == "Succeeded", fp16.message
    assert fp16.size_bytes is not None and fp32.size_bytes is not None
    assert 0.45 < fp16.size_bytes / fp32.size_bytes < 0.55
    assert fp16.parity is not None and fp16.parity.label_agreement >= 0.95
    assert manifest["quantization"] == {"mode": "fp16", "method": "float16", "keepIoTypes": True}
    model = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_torchscript_export_matches_torch(text_model: Trained, tmp_path: Path) -> None:
    report, manifest = run_export(text_model, tmp_path / "ts", format="torchscript")

    assert report.phase == "Succeeded", report.message
    assert manifest["artifact"] == "model.pt" and manifest["exporter"] == "torch.jit.trace"
    assert report.parity is not None and report.parity.max_abs_logit_diff < 1e-5
    assert manifest["latencyMs"]["runtime"].startswith("torchscript")
    classifier = ExportedClassifier.load(tmp_path / "ts")
    assert classifier.predict("superb brilliant wonderful film")[0] == "positive"


def test_dynamo_exporter_also_works_at_opset_18(text_model: Trained, tmp_path: Path) -> None:
    options = ExportOptions(latency_runs=5, warmup_runs=1, exporter="dynamo")
    report, manifest = run_export(text_model, tmp_path / "out", options=options, opset=18)

    assert report.phase == "Succeeded", report.message
    assert report.graph_parity is not None and report.graph_parity.max_abs_logit_diff < 1e-4
    assert manifest["exporter"] == "dynamo" and manifest["opset"] == 18


def test_large_models_use_external_data(text_model: Trained, tmp_path: Path) -> None:
    # The 2 GiB protobuf limit, scaled down: anything over 100 kB is written with external data.
    options = ExportOptions(latency_runs=5, warmup_runs=1, external_data_threshold=100_000)
    report, manifest = run_export(text_model, tmp_path / "out", options=options)

    assert report.phase == "Succeeded", report.message
    out = tmp_path / "out"
    assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    assert {"model.onnx", "model.onnx.data"} <= set(manifest["files"])
    assert report.size_bytes == (out / "model.onnx").stat().st_size + (out / "model.onnx.data").stat().st_size
    assert ExportedClassifier.load(out).predict("awful boring dull hated it")[0] == "negative"


# --- budgets and accuracy-aware int8 ---------------------------------------------------------------


def test_size_budget_miss_fails_and_says_by_how_much_and_what_to_try(text_model: Trained, tmp_path: Path) -> None:
    report, manifest = run_export(text_model, tmp_path / "out", budgets={"maxSizeMB": 0.05, "maxLatencyMs": 10_000})

    assert report.phase == "Failed"
    assert report.message.startswith("maxSizeMB missed: ")
    assert "> 0.05 MB (by " in report.message and "% over" in report.message
    assert "try quantize: int8" in report.message
    assert "maxLatencyMs" not in report.message  # met budgets are recorded but not blamed
    assert manifest["phase"] == "Failed"
    assert [(b["budget"], b["passed"]) for b in manifest["budgets"]] == [("maxSizeMB", False), ("maxLatencyMs", True)]


def test_latency_budget_miss_fails_clearly(image_model: Trained, tmp_path: Path) -> None:
    report, _ = run_export(image_model, tmp_path / "out", quantize="int8", budgets={"maxLatencyMs": 0.001})

    assert report.phase == "Failed"
    assert report.message.startswith("maxLatencyMs missed: ")
    assert "ms > 0.001 ms" in report.message and "smaller model" in report.message
    assert "1 CPU thread at batch 1" in report.message


def test_accuracy_budget_miss_fails_without_the_fallback(text_model_outlier: Trained, tmp_path: Path) -> None:
    options = ExportOptions(latency_runs=5, warmup_runs=1, accuracy_aware=False)
    report, manifest = run_export(
        text_model_outlier, tmp_path / "out", options=options, quantize="int8", budgets={"maxAccuracyDrop": 1.0}
    )

    assert report.phase == "Failed"
    assert report.message.startswith("maxAccuracyDrop missed: ")
    assert "pt > 1 pt" in report.message and "try quantize: fp16 or none" in report.message
    assert report.accuracy_drop is not None and report.accuracy_drop > 20  # the outlier ruins plain int8
    assert manifest["keptFp32Layers"] == []


def test_accuracy_aware_int8_keeps_the_sensitive_text_layer_in_fp32(
    text_model_outlier: Trained, tmp_path: Path
) -> None:
    report, manifest = run_export(
        text_model_outlier, tmp_path / "out", quantize="int8", budgets={"maxAccuracyDrop": 1.0}
    )

    assert report.phase == "Succeeded", report.message
    assert report.kept_fp32_layers == ["bert.embeddings.word_embeddings"]
    assert report.accuracy_drop is not None and report.accuracy_drop <= 1.0
    aware = manifest["quantization"]["accuracyAware"]
    assert aware["stopped"] == "budget met"
    assert aware["attempts"][0]["keptFp32"] == [] and aware["attempts"][0]["accuracyDrop"] > 20
    assert aware["attempts"][-1]["keptFp32"] == ["bert.embeddings.word_embeddings"]
    # Blocks are probed first (3 embedding tables, 2 encoder layers); the word embeddings stand out.
    blocks = [probe["scope"] for probe in aware["sensitivity"]]
    assert sorted(blocks) == [
        "bert.embeddings.position_embeddings",
        "bert.embeddings.token_type_embeddings",
        "bert.embeddings.word_embeddings",
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
    ]
    worst = max(aware["sensitivity"], key=lambda probe: probe["logitError"])
    assert worst["scope"] == "bert.embeddings.word_embeddings" and worst["opType"] == "Gather"
    assert manifest["quantization"]["keptFp32Layers"][0]["opType"] == "Gather"
    assert manifest["keptFp32Layers"] == ["bert.embeddings.word_embeddings"]
    assert "1 layer(s) kept in fp32" in report.message


def test_accuracy_aware_int8_keeps_the_sensitive_image_layer_in_fp32(
    image_model_outlier: Trained, tmp_path: Path
) -> None:
    report, manifest = run_export(
        image_model_outlier, tmp_path / "out", quantize="int8", budgets={"maxAccuracyDrop": 2.0}
    )

    assert report.phase == "Succeeded", report.message
    assert report.kept_fp32_layers == ["fc"]
    assert manifest["quantization"]["method"] == "static"
    assert manifest["quantization"]["accuracyAware"]["attempts"][0]["accuracyDrop"] > 20


def test_fallback_stops_at_the_size_budget(text_model_outlier: Trained, tmp_path: Path) -> None:
    # A size budget 2 kB above the plain int8 model: keeping the embedding table (15 kB in fp32, 4 kB in
    # int8) in fp32 cannot fit, so the search must stop there rather than publish an oversized model.
    int8, _ = run_export(text_model_outlier, tmp_path / "probe", quantize="int8")
    assert int8.size_bytes is not None
    budget = (int8.size_bytes + 2000) / 1e6
    report, manifest = run_export(
        text_model_outlier,
        tmp_path / "out",
        quantize="int8",
        budgets={"maxAccuracyDrop": 1.0, "maxSizeMB": budget},
    )

    assert report.phase == "Failed"
    assert "maxAccuracyDrop missed" in report.message
    assert "would exceed the size budget" in report.message
    assert manifest["quantization"]["accuracyAware"]["stopped"].startswith("keeping bert.embeddings.word_embeddings")


# --- integrity -----------------------------------------------------------------------------------


def test_corrupt_source_artifact_is_refused(text_model: Trained, tmp_path: Path) -> None:
    broken = tmp_path / "artifact"
    shutil.copytree(text_model.artifact, broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(ArtifactError, match=r"corrupt: model.safetensors has sha256"):
        export_model(broken, target(), text_model.examples, tmp_path / "out", options=FAST)


def test_no_eval_examples_is_an_error(text_model: Trained, tmp_path: Path) -> None:
    from edgetune_trainer.export.report import ExportError

    with pytest.raises(ExportError, match="no eval examples"):
        run_export(text_model, tmp_path / "out", examples=[])


def test_torch_threads_are_restored_after_pinned_measurements(text_model: Trained, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    run_export(text_model, tmp_path / "out", format="torchscript")
    assert torch.get_num_threads() == before


def test_per_tensor_external_files_are_consolidated(tmp_path: Path) -> None:
    # The TorchScript exporter's layout for models over 2 GiB (one file per tensor), made small.
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["logits"], name="mm")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "w")],
    )
    path = tmp_path / "fp32" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(
        onnx.helper.make_model(graph),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
    )
    assert sorted(item.name for item in path.parent.iterdir()) == ["model.onnx", "w"]

    consolidate_external_data(path)

    assert sorted(item.name for item in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert OrtRunner(path)({"x": np.ones((1, 64), dtype=np.float32)})[0, 0] == 64.0


def test_sensitivity_search_probes_blocks_then_the_layers_of_the_block_it_reaches(
    text_model: Trained, tmp_path: Path
) -> None:
    import copy

    loaded = copy.deepcopy(text_model.loaded)
    with torch.no_grad():
        # A large constant added to one input column of the last FFN's output projection: LayerNorm removes
        # it in fp32, but int8 weight scales then round the rest of that matrix to zero.
        loaded.model.get_parameter("bert.encoder.layer.1.output.dense.weight")[:, 0] += 30.0
    inputs = ModelInputs(text_model.prep, loaded.tokenizer)
    feeds = inputs.encode([text for text, _ in text_model.examples[:32]])
    module = logits_module(loaded.model, "text")
    fp32 = export_onnx(module, inputs, feeds, tmp_path / "fp32" / "model.onnx", opset=17, exporter="torchscript")
    reference = OrtRunner(fp32)(feeds)
    np.testing.assert_allclose(reference, TorchRunner(module)(feeds), atol=1e-3)  # fp32 is unchanged
    quantizer = Int8Quantizer(fp32, tmp_path / "int8", "dynamic")
    search = SensitivitySearch(quantizer, lambda path: logit_error(reference, OrtRunner(path)(feeds)))

    first = next(search.ranked(quantizer.layers()))

    assert first.module == "bert.encoder.layer.1.output.dense"
    scopes = [probe.scope for probe in search.probes]
    blocks, layers = scopes[:5], scopes[5:]
    assert "bert.encoder.layer.1" in blocks and "bert.encoder.layer.0" in blocks
    assert all(scope.startswith("bert.encoder.layer.1.") for scope in layers) and len(layers) == 6
    assert max(search.probes, key=lambda probe: probe.error).scope in ("bert.encoder.layer.1", first.module)
