"""Sampler speed: LLaDA's reference loop against the Fast-dLLM switches, side by side in one run.

    python benchmarks/sampler_speed.py --json OUT.json [--device cuda] [--models tiny,100m]

For each model, the same prompts go through every method: the reference (no cache, one token per
step), prefix cache, dual cache, threshold decoding, and dual cache + threshold (Fast-dLLM's
combination). Reported per method: forwards (NFE), response tokens per forward, wall seconds (best
of --repeats, taken round-robin over the methods), response tokens per second, the speedup over
the reference measured in this run, and agreement: the fraction of response tokens identical to
the reference at temperature 0.

Models (all with the tiny model's 101-token character vocabulary, randomly initialised):
`tiny` the built-in tiny model (about 0.7M parameters; batch 2, gen length 256); `100m` a
bidirectional Llama of 113M parameters (hidden 768, 12 layers, intermediate 3072; batch 1, gen
length 64); `1b` 1.07B parameters (hidden 2048, 16 layers, intermediate 8192; batch 8, gen length
256), meant for `--device cuda`. `--checkpoint PATH` runs a trained policy instead.
Random weights are fine for the cost of a forward, but not for what depends on the model's
confidence: threshold decoding's NFE and the caches' agreement must be read on a trained model.
A 101-token vocabulary also hides the float64 softmax/noise cost that LLaDA's 126k vocabulary
adds per position (this sampler computes it for the current block only). On a shared CPU use
`--threads 1`: oversubscribed OpenMP threads made the tiny model 25x slower here.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from dllm import build_tiny_policy, load_policy, resolve_dtype  # noqa: E402
from rollout import generate_with_stats  # noqa: E402

METHODS = {  # name -> sampler switches (everything else as the reference)
    "reference": {},
    "prefix cache": {"cache": "prefix"},
    "dual cache": {"cache": "dual"},
    "threshold": {"threshold": None},  # filled from --threshold
    "dual + threshold": {"cache": "dual", "threshold": None},
}
MODELS = {  # name -> (model kwargs, batch, prompt length, gen length, block, steps, repeats)
    "tiny": (dict(hidden_size=128, num_layers=4, num_heads=4), 2, 64, 256, 32, 256, 3),
    "100m": (
        dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
        1, 32, 64, 32, 64, 1,
    ),
    "1b": (  # for a GPU run: 1.07B parameters
        dict(hidden_size=2048, num_layers=16, num_heads=16, intermediate_size=8192),
        8, 64, 256, 32, 256, 2,
    ),
}  # fmt: skip


def build(name: str, checkpoint: str | None, device: torch.device, dtype: torch.dtype):
    if checkpoint:
        return load_policy(checkpoint, device=device, dtype=dtype)
    policy = build_tiny_policy(**MODELS[name][0], max_positions=1024, seed=0)
    return policy.to(device=device, dtype=dtype)


def time_once(policy, prompts, opts, switches):
    """(tokens, stats, seconds) of one generate call, synchronised on CUDA."""
    if prompts.device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    tokens, stats = generate_with_stats(policy, prompts, **opts, **switches)
    if prompts.device.type == "cuda":
        torch.cuda.synchronize()
    return tokens, stats, time.perf_counter() - began


def bench_model(name, args, device) -> list[dict]:
    _, batch, plen, gen_length, block, steps, repeats = MODELS[name]
    batch, plen = args.batch or batch, args.prompt_length or plen
    gen_length, block = args.gen_length or gen_length, args.block_length or block
    steps = args.steps or steps
    repeats = args.repeats or repeats
    policy = build(name, args.checkpoint, device, resolve_dtype(args.dtype, device))
    params = sum(p.numel() for p in policy.parameters())
    g = torch.Generator().manual_seed(0)
    special = set(policy.tokenizer.all_special_ids) | {policy.mask_id, policy.eos_id, policy.pad_id}
    ordinary = torch.tensor([i for i in range(len(policy.tokenizer)) if i not in special])
    prompts = ordinary[torch.randint(len(ordinary), (batch, plen), generator=g)].to(device)
    opts = dict(gen_length=gen_length, steps=steps, block_length=block, mask_id=policy.mask_id,
                eos_id=policy.eos_id)  # fmt: skip
    # Warm-up (allocator, kernels, lazy init) on a short run of every code path.
    for switches in ({}, {"cache": "prefix"}, {"cache": "dual"}):
        generate_with_stats(policy, prompts, gen_length=block, steps=2, block_length=block,
                            mask_id=policy.mask_id, **switches)  # fmt: skip
    methods = {
        m: {k: (args.threshold if k == "threshold" else v) for k, v in sw.items()}
        for m, sw in METHODS.items()
    }
    # Repeats go round-robin over the methods, so a slow spell of a shared machine hits them all;
    # each method keeps its best time (temperature 0: every repeat gives the same tokens).
    best: dict[str, tuple] = {}
    for _ in range(repeats):
        for method, switches in methods.items():
            tokens, stats, seconds = time_once(policy, prompts, opts, switches)
            if method not in best or seconds < best[method][2]:
                best[method] = (tokens, stats, seconds)
    ref_tokens, _, ref_seconds = best["reference"]
    rows = []
    for method, switches in methods.items():
        tokens, stats, seconds = best[method]
        agree = (tokens[:, plen:] == ref_tokens[:, plen:]).double().mean().item()
        rows.append(dict(model=name, params_m=round(params / 1e6, 2), method=method, batch=batch,
                         prompt_length=plen, gen_length=gen_length, block_length=block,
                         steps=steps, nfe=stats.nfe, tokens_per_forward=stats.tokens_per_forward,
                         seconds=seconds, tokens_per_second=batch * gen_length / seconds,
                         speedup=ref_seconds / seconds, agreement=agree, **switches))  # fmt: skip
        print(_row_line(rows[-1]), flush=True)
    return rows


HEADER = (
    f"{'model':<6} {'params':>7} {'method':<17} {'NFE':>5} {'tok/fwd':>7} {'seconds':>8} "
    f"{'tok/s':>8} {'speedup':>7} {'agree':>6}"
)


def _row_line(r: dict) -> str:
    return (
        f"{r['model']:<6} {r['params_m']:>6.1f}M {r['method']:<17} {r['nfe']:>5} "
        f"{r['tokens_per_forward']:>7.2f} {r['seconds']:>8.2f} {r['tokens_per_second']:>8.1f} "
        f"{r['speedup']:>6.2f}x {r['agreement']:>6.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,100m", help="comma-separated: tiny, 100m, 1b")
    parser.add_argument("--checkpoint", default=None, help="a trained policy folder instead")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="prompts per call")
    parser.add_argument("--prompt-length", type=int, default=None, help="prompt tokens")
    parser.add_argument("--threshold", type=float, default=0.9, help="Fast-dLLM's default 0.9")
    parser.add_argument("--gen-length", type=int, default=None)
    parser.add_argument("--block-length", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="best-of-N timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    names = ["tiny"] if args.checkpoint else [m.strip() for m in args.models.split(",")]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; expected {list(MODELS)}")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(HEADER)
    rows = [row for name in names for row in bench_model(name, args, device)]
    if args.json:
        meta = dict(torch=torch.__version__, device=str(device), threads=torch.get_num_threads(),
                    machine=platform.platform(), threshold=args.threshold)  # fmt: skip
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
