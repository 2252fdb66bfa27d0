"""GPU: bf16 BERT-base fine-tuning samples/s and MFU on one CUDA device (when this machine has one).

BERT-base is built from its config (BertConfig defaults: 12 layers, hidden 768, vocab 30522, 110 M parameters
with a 2-label head; random init, no download) and trained on random token ids with the step edgetune's loop
runs on a GPU (training/loop.py): `torch.autocast(cuda, bfloat16)`, cross-entropy on the float32 logits, backward,
AdamW (fused), zero_grad. Throughput is timed with CUDA synchronisation over --steps steps after --warmup.

MFU = achieved FLOP/s / the device's dense bf16 peak, with FLOPs = 6 x parameters x tokens (forward 2, backward
4 per parameter per token; all parameters, so the embedding's lookups are counted as if they were matmuls
and attention's score/context products are left out: for BERT-base at sequence 128 the first overstates by
about 20 %, the second understates by about 2 %; the JSON carries the figure without embeddings too). Peaks
come from the table below by device name (--peak-tflops overrides); an unknown device gets samples/s only.

Goal (issue 10): MFU >= 0.35. Without a CUDA device the benchmark prints `SKIP: no CUDA device` and records
it as skipped. `--allow-cpu` runs the same code on the CPU with a toy BERT, to check the code path only.

    .venv/bin/python bench/bench_gpu.py [--quick | --full] [--batch 64] [--seq 128] [--peak-tflops N]
"""

from __future__ import annotations

import sys
import time
from typing import Any

import common

GOAL = 0.35
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name();
# the first match wins, so the more specific names come first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (HBM3)
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
SIZES = {
    "quick": {"steps": 10, "warmup": 3, "batch": 32},
    "default": {"steps": 50, "warmup": 10, "batch": 64},
    "full": {"steps": 200, "warmup": 20, "batch": 128},
}


def bf16_peak(device_name: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None when it is not in the table."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def measure(device_type: str, batch: int, seq: int, warmup: int, steps: int, toy: bool) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    device = torch.device(device_type)
    shape = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    config = BertConfig(num_labels=2, **(shape if toy else {}))  # defaults: BERT-base
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).to(device).train()
    parameters = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for p in model.bert.embeddings.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=device.type == "cuda")
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.randint(0, 2, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    elapsed = time.perf_counter() - started
    samples_per_second = batch * steps / elapsed
    tokens_per_second = samples_per_second * seq
    result: dict[str, Any] = {
        "parameters": parameters,
        "embedding_parameters": embedding,
        "samples_per_second": samples_per_second,
        "tokens_per_second": tokens_per_second,
        "step_ms": 1000 * elapsed / steps,
        "flops_per_second": 6 * parameters * tokens_per_second,
        "flops_per_second_without_embeddings": 6 * (parameters - embedding) * tokens_per_second,
    }
    if device.type == "cuda":
        result["max_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default 64)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--allow-cpu", action="store_true", help="no GPU: run a toy BERT on the CPU (code path only)")
    args = parser.parse_args(argv)
    size = common.size_name(args)
    sizes = {key: getattr(args, key) or value for key, value in SIZES[size].items()}
    started = time.time()
    import torch

    label = "bf16 BERT-base training MFU (6 x params x tokens / bf16 peak)"
    title = "GPU: bf16 BERT-base samples/s and MFU"
    goal = f"BERT-base, bf16 autocast, AdamW, batch {sizes['batch']} x seq {args.seq}. Goal (issue 10): MFU >= {GOAL}."
    run_sizes = {"size": size, "seq": args.seq, **sizes}
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("SKIP: no CUDA device", flush=True)
        checks = [common.skipped("mfu", label, GOAL, ">=", "no CUDA device", unit="")]
        data = common.result("gpu", title, goal, checks, sizes=run_sizes, started=started)
        common.save(data, args.json_out)
        return 0

    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu (--allow-cpu, toy BERT)"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (bf16_peak(device_name) if cuda else None)
    print(f"{device_name}: batch {sizes['batch']} x seq {args.seq}, {sizes['steps']} steps ...", flush=True)
    figures = measure("cuda" if cuda else "cpu", sizes["batch"], args.seq, sizes["warmup"], sizes["steps"], not cuda)
    figures.update(device=device_name, peak_flops=peak, torch=torch.__version__)
    if cuda:
        figures["cuda"] = torch.version.cuda
    rate = f"{figures['samples_per_second']:.0f} samples/s, {figures['tokens_per_second'] / 1e3:.0f} k tokens/s"
    if peak is None:
        reason = f"no bf16 peak known for {device_name!r} (give --peak-tflops)"
        checks = [common.check("mfu", label, None, GOAL, ">=", unit="", figure=f"{rate}; SKIP: {reason}", note=reason)]
    else:
        figures["mfu"] = figures["flops_per_second"] / peak
        figures["mfu_without_embeddings"] = figures["flops_per_second_without_embeddings"] / peak
        checks = [
            common.check(
                "mfu",
                label,
                figures["mfu"],
                GOAL,
                unit="",
                figure=f"{rate}; {figures['flops_per_second'] / 1e12:.0f} of {peak / 1e12:.0f} TFLOP/s ({device_name})",
                note=f"without the embedding parameters: MFU {figures['mfu_without_embeddings']:.3f}",
            )
        ]
    checks.append(
        common.check(
            "samples",
            f"bf16 BERT-base samples/s (seq {args.seq})",
            figures["samples_per_second"],
            None,
            unit="samples/s",
            figure=rate,
        )
    )
    data = common.result("gpu", title, goal, checks, sizes=run_sizes, details=figures, started=started)
    common.save(data, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
