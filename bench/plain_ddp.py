"""The baseline the trainer benchmarks compare against: what a user writes by hand with torch.distributed + DDP.

Each rank loads the Hugging Face model folder, reads and tokenizes its shard of the JSONL reviews (rank r
keeps rows r, r+W, ...), joins a gloo process group, wraps the model in DDP and trains with AdamW on random
batches (dropout on, as in edgetune). One OpenMP thread per process, as torchrun and Ray's 1-CPU workers do.

Used two ways:
- `throughput(...)` (bench_trainer.py): steady-state samples/s of the whole world after warm-up steps;
- as a script (bench_startup.py): `python bench/plain_ddp.py --model DIR --data FILE --workers 2 --steps 1`
  prints `FIRST_STEP` on stdout as soon as rank 0's first optimizer step is done, so the parent can time
  process start -> first step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

FIRST_STEP_MARKER = "FIRST_STEP"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker(
    rank: int,
    world: int,
    port: int,
    model_dir: str,
    data: str,
    batch: int,
    max_length: int,
    warmup: int,
    steps: int,
    out: str,
    announce_first_step: bool,
) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()][rank::world]
    encoded = tokenizer(
        [r["text"] for r in rows], max_length=max_length, truncation=True, padding="max_length", return_tensors="pt"
    )
    labels = torch.tensor([r["label"] for r in rows])
    model.train()  # from_pretrained returns eval mode; training means dropout on, as in edgetune
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    started = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            dist.barrier()
            started = time.perf_counter()
        index = torch.randint(0, len(labels), (batch,))
        logits = ddp(input_ids=encoded["input_ids"][index], attention_mask=encoded["attention_mask"][index]).logits
        torch.nn.functional.cross_entropy(logits, labels[index]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0 and announce_first_step and rank == 0:
            print(FIRST_STEP_MARKER, flush=True)
    dist.barrier()
    elapsed = time.perf_counter() - started
    if rank == 0 and out:
        Path(out).write_text(json.dumps({"samples_per_second": world * batch * steps / elapsed, "seconds": elapsed}))
    dist.destroy_process_group()


def _spawn(
    world: int,
    model_dir: Path,
    data: Path,
    batch: int,
    max_length: int,
    warmup: int,
    steps: int,
    out: str,
    announce_first_step: bool,
) -> None:
    # One OpenMP thread per process, set before the workers import torch, so no spinning thread pool
    # competes for the cores (torchrun does the same; Ray does for a 1-CPU worker).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch.multiprocessing as mp

    options = (batch, max_length, warmup, steps, out, announce_first_step)
    mp.spawn(worker, args=(world, _free_port(), str(model_dir), str(data), *options), nprocs=world)


def throughput(
    model_dir: Path, data: Path, workers: int, batch: int, warmup: int, steps: int, max_length: int = 64
) -> float:
    """Samples/s of the whole world over `steps` timed steps after `warmup` steps."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "plain.json"
        _spawn(workers, model_dir, data, batch, max_length, warmup, steps, str(out), announce_first_step=False)
        return float(json.loads(out.read_text())["samples_per_second"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plain torch.distributed DDP fine-tuning (the baseline)")
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face model folder")
    parser.add_argument("--data", type=Path, required=True, help="JSONL reviews: {text, label}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args(argv)
    _spawn(args.workers, args.model, args.data, args.batch, args.max_length, 0, args.steps, "", True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
