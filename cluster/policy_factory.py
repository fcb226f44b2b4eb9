"""Build the policy every actor of a run starts from (the same weights on every rank and worker)."""

from __future__ import annotations

import os

import torch

from dllm import Policy, build_tiny_policy, load_policy, resolve_device, resolve_dtype


def build_policy(config, *, path: str | None = None, dtype: str | None = None) -> Policy:
    """`path` (a checkpoint's policy/ folder) wins over the configured model; `dtype` over
    model.dtype (a learner keeping fp32 master weights)."""
    device = resolve_device(config.device)
    dtype = dtype or config.model.dtype
    source = path or config.model.name_or_path
    if source == "tiny":
        tiny = config.model.tiny
        policy = build_tiny_policy(
            hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            seed=config.seed,
            dtype=resolve_dtype(dtype, device),
        )
        return policy.to(device)
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
    if config.model.name_or_path == "tiny":
        from dllm import build_char_tokenizer

        return build_char_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
    tok.padding_side = "left"
    return tok
