"""Build the policy every actor of a run starts from (the same weights on every rank and worker).

The model's kind (`model.kind`, resolved by cluster/config.py) picks the loader: diffusion policies
through `dllm.build_tiny_policy` / `dllm.load_policy`, causal ones (the autoregressive baseline)
through `dllm.causal.build_tiny_causal_policy` / `load_causal_policy`. "tiny" and "tiny-causal"
share shapes, seed-determined initial weights and the character tokenizer.
"""

from __future__ import annotations

import os

import torch

from dllm import Policy, build_tiny_policy, load_policy, resolve_device, resolve_dtype

TINY_NAMES = ("tiny", "tiny-causal")  # built in-process, with the character tokenizer


def build_policy(config, *, path: str | None = None, dtype: str | None = None) -> Policy:
    """`path` (a checkpoint's policy/ folder) wins over the configured model; `dtype` over
    model.dtype (a learner keeping fp32 master weights). A causal model gives a CausalPolicy."""
    device = resolve_device(config.device)
    dtype = dtype or config.model.dtype
    source = path or config.model.name_or_path
    causal = config.model.kind == "causal"
    if source in TINY_NAMES:
        tiny = config.model.tiny
        if causal:
            from dllm.causal import build_tiny_causal_policy as build
        else:
            build = build_tiny_policy
        policy = build(hidden_size=tiny.hidden_size, num_layers=tiny.num_layers, num_heads=tiny.num_heads,
                       seed=config.seed, dtype=resolve_dtype(dtype, device))
        return policy.to(device)
    if causal:
        from dllm.causal import load_causal_policy

        return load_causal_policy(source, device=device, dtype=dtype, trust_remote_code=config.model.trust_remote_code)
    return load_policy(
        source, device=device, dtype=dtype, trust_remote_code=config.model.trust_remote_code,
        implementation=config.model.implementation,
    )


def set_threads(num_cpus: float, num_threads: int | None = None, cpu_affinity: list[int] | None = None) -> None:
    """One intra-op thread per reserved CPU unless set explicitly, so actors sharing a node do not
    oversubscribe it; with `cpu_affinity` the process runs on those cores only."""
    if cpu_affinity:
        os.sched_setaffinity(0, cpu_affinity)
    torch.set_num_threads(max(1, num_threads or int(num_cpus)))


def load_tokenizer(config):
    """The tokenizer the controller encodes prompts with (the same one the actors' policies carry)."""
    if config.model.name_or_path in TINY_NAMES:
        from dllm import build_char_tokenizer

        return build_char_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
    tok.padding_side = "left"
    return tok
