"""Fine-tuning a real pretrained model: what pretraining buys, and what each freeze mode costs and buys.

    .venv/bin/python bench/bench_finetune.py            # 4 runs of examples/minilm-sentiment.yaml: ~7 min
    .venv/bin/python bench/bench_finetune.py --quick    # 1 epoch each (~3 min)
    options: --retrain  --json-out FILE

Each row is `edgetune run` on examples/minilm-sentiment.yaml (sentence-transformers/all-MiniLM-L6-v2 from
the packaged wheel, offline; 800 training reviews, 1,200 held-out reviews whose words and phrasings training
never shows; 2 DDP workers on CPU), changing only the model section:
- freeze: none, layers:2, backbone (the pretrained model; see docs/training.md for the modes);
- pretrained: false, freeze: none: the same architecture and tokenizer from random weights, the baseline.
Same data, steps, seed and learning rate for all. Reported per row: held-out accuracy and macro F1, training
samples/s (the trainer's own figure, all workers), training seconds, trainable parameters.
Goal (issue 18): the fine-tuned pretrained model beats its random twin by >= 10 points of accuracy.
Runs are cached in bench/results/cache/ by the job's content (--retrain runs them again).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import common
import pretrained

sys.path.insert(0, str(common.ROOT / "trainer"))

from edgetune_trainer.model.loading import apply_freeze, load_artifact

GAP_GOAL = 10.0  # points
ROWS = (  # (row name, model section changes)
    ("pretrained, freeze: none", {"freeze": "none"}),
    ("pretrained, freeze: layers:2", {"freeze": "layers:2"}),
    ("pretrained, freeze: backbone", {"freeze": "backbone"}),
    ("random init, freeze: none", {"freeze": "none", "pretrained": False}),
)


def measure(name: str, model: dict[str, Any], quick: bool, retrain: bool) -> dict[str, Any]:
    cache = common.RESULTS / "cache"
    if model == {"freeze": "none"} and not quick:
        summary, artifact = pretrained.fully_finetuned_minilm(cache, retrain)
    else:
        job_name = f"bench-ft-{row_key(model)}" + ("-quick" if quick else "")
        summary, artifact = pretrained.finetune_minilm(
            cache, job_name, model, retrain=retrain, epochs=1 if quick else None
        )
    loaded, _ = load_artifact(artifact)
    trainable = apply_freeze(loaded, model["freeze"])
    return {
        "row": name,
        "model": model,
        "evalAccuracy": summary["evalAccuracy"],
        "evalMacroF1": summary["evalMacroF1"],
        "samplesPerSecond": summary["samplesPerSecond"],
        "trainSeconds": summary["trainSeconds"],
        "steps": summary["steps"],
        "trainableParameters": trainable,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }


def count(parameters: int) -> str:
    return f"{parameters / 1e6:.2f} M" if parameters >= 100_000 else f"{parameters:,}"


def row_key(model: dict[str, Any]) -> str:
    init = "pretrained" if model.get("pretrained", True) else "random"
    return f"{init}-{model['freeze'].replace(':', '')}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | held-out accuracy | macro F1 | samples/s | training | trainable parameters |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | **{r['evalAccuracy']:.1%}** | {r['evalMacroF1']:.3f} | {r['samplesPerSecond']:.1f} | "
            f"{r['trainSeconds']:.0f} s ({r['steps']} steps) | {count(r['trainableParameters'])} of "
            f"{count(r['parameters'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--retrain", action="store_true", help="run every job again instead of using the cache")
    args = parser.parse_args(argv)
    wall_started = time.time()
    rows = []
    for name, model in ROWS:
        print(f"fine-tuning: {name} ...", flush=True)
        rows.append(measure(name, model, args.quick, args.retrain))
    best, scratch = rows[0], rows[-1]
    gap = (best["evalAccuracy"] - scratch["evalAccuracy"]) * 100
    markdown = table(rows) + "\n"
    print()
    print(markdown)
    data = common.result(
        "finetune",
        "Pretrained MiniLM vs random init, and the freeze modes",
        f"edgetune run on examples/minilm-sentiment.yaml, offline. Goal (issue 18): the fine-tuned pretrained "
        f"model beats the same architecture from random init by >= {GAP_GOAL:.0f} points on held-out reviews.",
        [
            common.check(
                "finetune-pretraining-gap",
                "held-out accuracy, pretrained minus random init (freeze: none)",
                gap,
                GAP_GOAL,
                unit="pt",
                figure=f"{best['evalAccuracy']:.1%} vs {scratch['evalAccuracy']:.1%}",
            ),
            *(
                common.check(
                    f"finetune-{row_key(r['model'])}",
                    f"{r['row']}: held-out accuracy",
                    r["evalAccuracy"] * 100,
                    None,
                    unit="%",
                    figure=f"{r['samplesPerSecond']:.1f} samples/s, {count(r['trainableParameters'])} trainable",
                )
                for r in rows
            ),
        ],
        sizes={"size": common.size_name(args), "epochs": 1 if args.quick else 3},
        details={"rows": rows},
        started=wall_started,
    )
    common.save(data, args.json_out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
