"""Learner memory per rank: replicated ranks against FSDP2-sharded ones, at two n_t.

    python benchmarks/learner_sharding.py --json OUT.json [--device cuda]

Each configuration starts its ranks in fresh processes (gloo on CPU, NCCL on CUDA), builds the
same tiny Llama and batch, runs one warm-up step (so AdamW's state exists), then measures one
bgpo step on rank 0's shard of the batch. Per rank it reports:
- state: the bytes this rank keeps between steps, counted tensor by tensor: its parameters (the
  local shard under FSDP) and AdamW's two moments. Exact, on any device.
- step peak: on CUDA, max_memory_allocated during the step over the memory before it. On CPU, the
  peak of live tensor bytes during gradient accumulation (forwards, backwards, all-gathered
  weights, gradients), from learner_memory.py's dispatch-mode tracker; the optimizer step is left
  out there because under FSDP it runs on DTensors whose inner allocations the tracker cannot see.
- total = state + step peak: the figure that must fit a device.
Expected: FSDP over N ranks keeps about 1/N of the state; the step peak stays flat in n_t in both
modes (BGPO), and under FSDP adds the all-gathered weights of about one block at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learner_memory import LiveTensorPeak, _make_batch  # noqa: E402

CONFIGS = [("replicate", 2), ("fsdp", 2)]  # same ranks and rows per rank: only the sharding differs


def _local_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def _rank_main(rank: int, world: int, sharding: str, n_t: int, args, init_file: str, out: str) -> None:
    from dllm import build_tiny_policy
    from learner import LearnerConfig, LearnerWorker, draw_masks

    torch.set_num_threads(args.threads)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        policy = build_tiny_policy(hidden_size=args.hidden, num_layers=args.layers,
                                   num_heads=args.heads, seed=0).to(device)
        params = sum(p.numel() for p in policy.parameters())
        config = LearnerConfig(n_t=n_t, micro_batch_size=args.micro_batch, lr=1e-6, sharding=sharding)
        learner = LearnerWorker(policy, config, rank=rank, world_size=world,
                                process_group=dist.group.WORLD)
        batch = _make_batch(policy, args)
        gen = torch.Generator().manual_seed(1)
        shard = slice(rank, None, world)  # every rank gets the same number of rows
        warm = replace(batch, masks=draw_masks(len(batch), 1, batch.response_length, gen))
        learner.step(warm.select(shard))
        measured = replace(batch, masks=draw_masks(len(batch), n_t, batch.response_length, gen))
        measured = measured.select(shard)

        state = sum(_local_bytes(p) for p in policy.parameters())
        state += sum(_local_bytes(v) for s in learner.optimizer.state.values() for k, v in s.items()
                     if k != "step" and isinstance(v, torch.Tensor))
        start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            learner.step(measured)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            tracker = LiveTensorPeak()
            with tracker:
                learner.accumulate_gradients(measured)
            peak = tracker.peak
            learner.apply_update()
        seconds = time.perf_counter() - start
        record = {"sharding": sharding, "world_size": world, "rank": rank, "n_t": n_t,
                  "device": device.type, "params": params, "state_bytes": state,
                  "step_peak_bytes": peak, "total_bytes": state + peak, "step_seconds": seconds}
        Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def run_config(sharding: str, world: int, n_t: int, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(world, sharding, n_t, args, os.path.join(tmp, "init"), tmp),
                 nprocs=world, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def table(records: list[dict]) -> str:
    mib = 2**20
    rank0 = [r for r in records if r["rank"] == 0]
    base = {r["n_t"]: r for r in rank0 if r["sharding"] == "replicate"}
    lines = ["| sharding | ranks | n_t | state / rank (MiB) | step peak (MiB) | total (MiB) | "
             "total vs replicate | step s |", "|---|---|---|---|---|---|---|---|"]
    for r in rank0:
        ratio = r["total_bytes"] / base[r["n_t"]]["total_bytes"] if r["n_t"] in base else float("nan")
        lines.append(f"| {r['sharding']} | {r['world_size']} | {r['n_t']} | {r['state_bytes'] / mib:.1f} | "
                     f"{r['step_peak_bytes'] / mib:.1f} | {r['total_bytes'] / mib:.1f} | {ratio:.2f} | "
                     f"{r['step_seconds']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--n-t", default="2,16", help="comma-separated n_t values")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="responses in the global batch")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--prompt-length", type=int, default=32)
    p.add_argument("--response-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--json", type=Path, help="write every record here")
    args = p.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < max(w for _, w in CONFIGS):
        sys.exit(f"--device cuda needs {max(w for _, w in CONFIGS)} GPUs for the sharded runs")
    records = []
    for n_t in (int(x) for x in args.n_t.split(",")):
        for sharding, world in CONFIGS:
            got = run_config(sharding, world, n_t, args)
            records.extend(got)
            print(f"[{sharding} x{world} n_t={n_t}] rank 0: state {got[0]['state_bytes'] / 2**20:.1f} MiB, "
                  f"step peak {got[0]['step_peak_bytes'] / 2**20:.1f} MiB", flush=True)
    print(table(records))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"settings": settings, "records": records}, indent=2))


if __name__ == "__main__":
    main()
