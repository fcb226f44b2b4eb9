"""Peak memory of one learner step versus n_t: BGPO (flat) against the retained-graph ELBO ratio.

    python benchmarks/learner_memory.py --n-t 1,2,4,8,16,32 --json OUT.json [--device cuda]
    python benchmarks/learner_memory.py --device cuda --hidden 2048 --layers 16 --heads 16 \
        --intermediate 8192 --n-t 1,4,16 --mc-chunk 1,4 --json OUT.json   # 1.07B parameters

`--mc-chunk` lists MC samples per forward (LearnerConfig.mc_chunk; each value up to n_t is run).
`--child-timeout` bounds each configuration's subprocess: one that runs past it is recorded as
`timeout`, like an out-of-memory is recorded as `oom`, and the sweep goes on. The JSON is
rewritten after every configuration, so a sweep cut short keeps what it measured. On CUDA the
model is initialised on the GPU (a 1B model's CPU initialisation takes longer than its step).

Every (objective, n_t) runs in a fresh subprocess, so no peak or allocator cache leaks from one
configuration into the next. In each subprocess: build the model and batch, run one warm-up step
with n_t = 1 (so AdamW's state and every lazily created buffer exist), then measure one step
with the configured n_t. Same model, same batch, same masks seed for every configuration.

What "peak" means:
- cuda: torch.cuda.max_memory_allocated() during the step minus memory_allocated() just before it.
- cpu: PyTorch keeps no allocation statistics for CPU tensors, so a TorchDispatchMode sees every
  tensor an ATen op returns during the step (forward, autograd backward and the optimizer), counts
  the bytes of each newly allocated storage until that storage is freed (a weakref finalizer),
  and reports the maximum of the live sum: the CPU analogue of max_memory_allocated over the
  pre-step baseline. It misses scratch memory a kernel allocates and frees internally and any
  allocator overhead. As a cross-check the process's peak RSS growth over the RSS just before
  the step (ru_maxrss, Linux) is reported too (`rss_peak_bytes`); RSS also counts allocator
  caching and fragmentation, and the warm-up step's own peak is a floor for it.
The two agree: on an H100 the default configuration gave 189.4 MiB (bgpo, n_t=1) and 5790 MiB
(elbo_ratio, n_t=32) by max_memory_allocated, where the CPU tracker gives 187.1 and 5787.6 MiB.
Expected shape: elbo_ratio grows linearly (n_t graphs alive); bgpo is flat from n_t = 2 on, one
gradient-sized buffer above n_t = 1 (from the second MC sample on, the accumulated gradient is
alive while the next sample's activations are; at n_t = 1 gradients only appear as activations
are freed), i.e. +4 bytes/parameter in fp32.
step_seconds is the measured step's wall time (on CPU it includes the tracker's small per-op
cost, and it is noisy on a shared machine; memory is the point of this benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import weakref
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("bgpo", "elbo_ratio")


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of tensor storages allocated (and still alive) since the mode was entered."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        if self.live.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            # Views and in-place results share an input's storage: not a new allocation.
            if nbytes == 0 or key in inputs or key in self.live:
                continue
            self.live[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, nbytes)
        return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _make_batch(policy, args):
    from learner import build_train_batch

    g = torch.Generator().manual_seed(0)
    vocab = len(policy.tokenizer)
    prompts, responses = [], []
    for i in range(args.batch):
        prompt_len = args.prompt_length - (i % 4) * 3  # some left padding, as in real batches
        prompts.append(torch.randint(5, vocab, (prompt_len,), generator=g).tolist())
        responses.append(torch.randint(5, vocab, (args.response_length,), generator=g).tolist())
    rewards = torch.rand(args.batch, generator=g).tolist()
    groups = [i // 4 for i in range(args.batch)]
    return build_train_batch(prompts, responses, rewards, groups, pad_id=policy.pad_id)


def run_one(args) -> dict:
    """One configuration, in this (fresh) process."""
    from dllm import build_tiny_policy
    from learner import LearnerConfig, LearnerWorker, draw_masks

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with torch.device(device):  # parameters created where they will live
        policy = build_tiny_policy(
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            intermediate_size=args.intermediate,
            seed=0,
        )
    policy = policy.to(device)
    batch = _make_batch(policy, args)
    config = LearnerConfig(
        objective=args.objective,
        n_t=args.one_n_t,
        micro_batch_size=args.batch,
        mc_chunk=args.one_mc_chunk,
        lr=1e-6,
    )
    learner = LearnerWorker(policy, config)
    gen = torch.Generator().manual_seed(1)
    warm = replace(batch, masks=draw_masks(len(batch), 1, batch.response_length, gen))
    learner.step(warm)
    measured = replace(
        batch, masks=draw_masks(len(batch), args.one_n_t, batch.response_length, gen)
    )

    record = {
        "objective": args.objective,
        "n_t": args.one_n_t,
        "mc_chunk": args.one_mc_chunk,
        "device": device.type,
        "params": sum(p.numel() for p in policy.parameters()),
    }
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            learner.step(measured)
        except torch.OutOfMemoryError:
            # Out of memory is this benchmark's result for that configuration, not a crash.
            return {**record, "oom": True, "peak_bytes": None, "step_seconds": None}
        torch.cuda.synchronize(device)
        record["step_seconds"] = time.perf_counter() - start
        record["peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
    else:
        rss_before = _rss_bytes()
        tracker = LiveTensorPeak()
        start = time.perf_counter()
        with tracker:
            learner.step(measured)
        record["step_seconds"] = time.perf_counter() - start
        record["peak_bytes"] = tracker.peak
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        record["rss_peak_bytes"] = max(0, peak_rss - rss_before)
    return record


def _child_command(args, objective: str, n_t: int, mc_chunk: int) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one-objective",
        objective,
        "--one-n-t",
        str(n_t),
        "--one-mc-chunk",
        str(mc_chunk),
    ]
    for name in (
        "device",
        "hidden",
        "layers",
        "heads",
        "intermediate",
        "batch",
        "prompt_length",
        "response_length",
        "threads",
    ):
        if getattr(args, name) is not None:
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return cmd


def _run_child(args, env: dict, objective: str, n_t: int, mc_chunk: int) -> dict:
    """One configuration in a fresh subprocess; a timeout is a recorded result, a crash raises."""
    try:
        out = subprocess.run(
            _child_command(args, objective, n_t, mc_chunk),
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=args.child_timeout,
        )
    except subprocess.TimeoutExpired:
        return {"objective": objective, "n_t": n_t, "mc_chunk": mc_chunk, "device": args.device,
                "timeout": True, "timeout_s": args.child_timeout, "peak_bytes": None,
                "step_seconds": None}  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{objective} n_t={n_t} mc_chunk={mc_chunk} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(records: list[dict]) -> str:
    """One line per record; the ratio is against the smallest n_t measured for that objective
    (with mc_chunk 1 where that was measured)."""
    base = {}
    for r in sorted(records, key=lambda r: (r["n_t"], r.get("mc_chunk", 1))):
        if r["peak_bytes"] is not None:
            base.setdefault(r["objective"], r["peak_bytes"])
    lines = [
        f"{'objective':<11} {'n_t':>4} {'chunk':>5} {'peak MiB':>10} {'vs n_t=1':>9} {'maxRSS+MiB':>10} {'step s':>8}"
    ]
    for r in records:
        head = f"{r['objective']:<11} {r['n_t']:>4} {r.get('mc_chunk', 1):>5}"
        if r.get("oom") or r.get("timeout"):
            lines.append(f"{head} {'OOM' if r.get('oom') else 'timeout':>10}")
            continue
        rss = f"{r['rss_peak_bytes'] / 2**20:10.1f}" if "rss_peak_bytes" in r else f"{'-':>10}"
        ratio = r["peak_bytes"] / base[r["objective"]]
        lines.append(
            f"{head} {r['peak_bytes'] / 2**20:10.1f} {ratio:8.2f}x {rss} {r['step_seconds']:8.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-t", default="1,2,4,8,16,32", help="comma-separated MC sample counts")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=None, help="MLP width (2 x hidden)")
    parser.add_argument("--mc-chunk", default="1", help="comma-separated MC samples per forward")
    parser.add_argument("--child-timeout", type=float, default=None, help="seconds per config")
    parser.add_argument("--batch", type=int, default=8, help="responses per step (one micro-batch)")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--response-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one-objective", dest="objective", help=argparse.SUPPRESS)
    parser.add_argument("--one-n-t", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-mc-chunk", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.objective is not None:  # child: measure one configuration, print one JSON line
        print(json.dumps(run_one(args)))
        return

    records = []
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    chunks = [int(x) for x in args.mc_chunk.split(",")]
    for objective in args.objectives.split(","):
        for n_t in (int(x) for x in args.n_t.split(",")):
            for mc_chunk in (c for c in chunks if c <= n_t or c == min(chunks)):
                records.append(_run_child(args, env, objective, n_t, min(mc_chunk, n_t)))
                print(json.dumps(records[-1]), file=sys.stderr, flush=True)
                if args.json:  # rewritten as it goes: a sweep cut short keeps what it measured
                    args.json.write_text(json.dumps(records, indent=2))
    params = next((r["params"] for r in records if "params" in r), 0)
    print(
        f"learner step peak memory, device={args.device}, model {params / 1e6:.1f}M params "
        f"(hidden {args.hidden}, {args.layers} layers, MLP {args.intermediate or 2 * args.hidden}), batch {args.batch}, prompt {args.prompt_length}, "
        f"response {args.response_length}; peak = {'max_memory_allocated' if args.device == 'cuda' else 'live tensor bytes (dispatch-mode tracker)'} over the pre-step baseline"
    )
    print(_table(records))
    if args.device == "cpu":
        print(
            "maxRSS+: ru_maxrss growth over the pre-step RSS (cross-check; includes allocator caching,"
        )
        print("floored by the warm-up step's own peak, so small values are unreliable)")


if __name__ == "__main__":
    main()
