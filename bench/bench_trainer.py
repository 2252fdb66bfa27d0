"""Trainer throughput: edgetune (Ray Train DDP) vs a plain torch.distributed DDP script, same run.

Both train the same BERT (built from a config, random init) on the same generated reviews with the same
per-worker batch, 2 workers on gloo with one thread each (Ray gives each 1-CPU worker OMP_NUM_THREADS=1).
Throughput is steady-state samples/s over the whole world: warm-up steps are excluded on both sides,
and edgetune's figure includes its own overheads (progress reports, the final checkpoint is outside
the timed window). Goal (issue 4): edgetune / plain >= 0.97.

    .venv/bin/python bench/bench_trainer.py [--steps 60] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
GOAL = 0.97


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plain_worker(
    rank: int, world: int, port: int, model_dir: str, data: str, batch: int, warmup: int, steps: int, out: str
) -> None:
    """The baseline: what a user would write by hand with torch.distributed + DDP."""
    import json as _json

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [_json.loads(line) for line in Path(data).read_text().splitlines()][rank::world]
    encoded = tokenizer(
        [r["text"] for r in rows], max_length=64, truncation=True, padding="max_length", return_tensors="pt"
    )
    labels = torch.tensor([r["label"] for r in rows])
    model.train()  # from_pretrained returns eval mode; training means dropout on, as in edgetune
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            dist.barrier()
            started = time.perf_counter()
        index = torch.randint(0, len(labels), (batch,))
        logits = ddp(input_ids=encoded["input_ids"][index], attention_mask=encoded["attention_mask"][index]).logits
        torch.nn.functional.cross_entropy(logits, labels[index]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    dist.barrier()
    elapsed = time.perf_counter() - started
    if rank == 0:
        Path(out).write_text(_json.dumps({"samples_per_second": world * batch * steps / elapsed}))
    dist.destroy_process_group()


def run_plain(model_dir: Path, data: Path, batch: int, warmup: int, steps: int) -> float:
    # As torchrun does (and Ray does for a 1-CPU worker): one OpenMP thread per process, set before the
    # worker imports torch, so no spinning thread pool competes for the two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "plain.json"
        mp.spawn(
            plain_worker, args=(2, free_port(), str(model_dir), str(data), batch, warmup, steps, str(out)), nprocs=2
        )
        return float(json.loads(out.read_text())["samples_per_second"])


def run_edgetune(model_dir: Path, data: Path, batch: int, warmup: int, steps: int) -> float:
    import ray
    from s3server import CREDENTIALS, S3Server

    from edgetune_trainer.config import load_train_config
    from edgetune_trainer.train import run_training

    os.environ.update(CREDENTIALS)
    os.environ["EDGETUNE_METRICS_PORT"] = "0"
    with tempfile.TemporaryDirectory() as folder:
        server = S3Server(Path(folder)).start()
        try:
            server.create_bucket("bench")
            total = warmup + steps
            config = load_train_config(
                {
                    "name": "bench",
                    "model": {"source": str(model_dir), "task": "text-classification", "numLabels": 2},
                    "dataset": {"source": str(data), "validationFraction": 0.05, "maxLength": 64},
                    "training": {"epochs": 0, "maxSteps": total, "batchSizePerWorker": batch, "learningRate": 1e-4},
                    "scaling": {"workers": 2},
                    "storage": {"uri": "s3://bench/runs", "endpoint": server.endpoint},
                    "checkpoint": {"everySteps": 10**9, "keep": 1},
                }
            )
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            result = run_training(config, sinks=[], fresh=True)
            ray.shutdown()
        finally:
            server.stop()
    # Progress events come every total//20 steps, each with the rate over its interval; skip warm-up.
    events = [e for e in result.events if e.kind == "progress" and e.step > warmup and e.samples_per_second]
    per_interval = 2 * batch * (total // 20)  # samples the whole world trains between two reports
    seconds = sum(per_interval / e.samples_per_second for e in events)
    return len(events) * per_interval / seconds if seconds else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    from edgetune_trainer.synthetic import write_reviews, write_tiny_bert

    with tempfile.TemporaryDirectory() as folder:
        model_dir = write_tiny_bert(
            Path(folder) / "bert", hidden=args.hidden, layers=args.layers, heads=4, max_length=64
        )
        data = write_reviews(Path(folder) / "reviews.jsonl", 4000, seed=1)
        plain = run_plain(model_dir, data, args.batch, args.warmup, args.steps)
        edgetune = run_edgetune(model_dir, data, args.batch, args.warmup, args.steps)
    ratio = edgetune / plain
    verdict = "PASS" if ratio >= GOAL else "MISS"
    params = f"BERT hidden {args.hidden}, {args.layers} layers, seq 64, batch {args.batch}/worker, 2 workers, gloo"
    table = (
        "| trainer | samples/s | ratio | goal |\n|---|---|---|---|\n"
        f"| plain torch.distributed DDP | {plain:.1f} | 1.00 | |\n"
        f"| edgetune (Ray Train V2) | {edgetune:.1f} | {ratio:.3f} | >= {GOAL} {verdict} |\n"
    )
    print(f"trainer throughput ({params}, {args.steps} timed steps after {args.warmup} warm-up)\n{table}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "trainer.md").write_text(f"# Trainer throughput\n\n{params}\n\n{table}")
    (results / "trainer.json").write_text(
        json.dumps(
            {
                "plain_samples_per_second": plain,
                "edgetune_samples_per_second": edgetune,
                "ratio": ratio,
                "goal": GOAL,
                "verdict": verdict,
                "setup": params,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
