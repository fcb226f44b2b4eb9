"""The tiny built-in diffusion LM: a LLaDA-architecture mask predictor from stock classes.

LLaDA is a Llama-style transformer without the causal mask, trained to predict masked tokens.
`LlamaConfig(is_causal=False)` gives exactly that from transformers' own `LlamaForCausalLM`, so
the tiny model saves and loads with `save_pretrained` and needs no remote code. Sized for CPU
tests and the embedded default run (about 1M parameters with the defaults).
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dllm.policy import Policy
from dllm.tokenizer import build_char_tokenizer


def build_tiny_policy(
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> Policy:
    """A freshly initialised tiny policy with the character tokenizer (deterministic per seed)."""
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        is_causal=False,  # bidirectional attention: a mask predictor, not an autoregressive LM
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        mask_token_id=tokenizer.mask_token_id,
        attn_implementation=attn_implementation,
        use_cache=False,  # the rollout sampler turns the KV cache on when it wants one
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(dtype)
    return Policy(
        model,
        tokenizer,
        kind="llama",
        mask_id=tokenizer.mask_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    ).eval()
