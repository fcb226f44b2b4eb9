"""Causal (autoregressive) policies: the baseline the diffusion policies are compared against.

Any transformers causal LM loads through `AutoModelForCausalLM`; `build_tiny_causal_policy` makes a
tiny causal Llama in-process (the tiny diffusion model's architecture with the causal mask, and
the same character tokenizer), which saves with `save_pretrained` into a folder that vLLM and
`load_causal_policy` both read. `response_logprobs` gives the token-level log-probs the GRPO
objective needs, for the project's one batch layout (left-padded prompt ++ response of L tokens).

Conventions shared with `dllm.policy`: left padding, and `position_ids` that start at 0 on the
first real token, so a padded row sees exactly what it would see alone. Logits at position t
predict token t + 1 (the usual causal shift, applied here and nowhere else).
This module does not sample (rollout/causal_sampler.py, rollout/vllm_engine.py) or train (learner/).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dllm.precision import resolve_device, resolve_dtype


class CausalPolicy(nn.Module):
    """A causal LM with its tokenizer and known EOS / pad ids; `forward` handles left padding."""

    def __init__(self, model: nn.Module, tokenizer, *, eos_id: int, pad_id: int) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.kind = "causal"
        self.eos_id = int(eos_id)
        self.pad_id = int(pad_id)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"CausalPolicy(params={n / 1e6:.2f}M, eos_id={self.eos_id})"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, T, V]; logits[:, t] predicts token t + 1. `attention_mask` is 1 on real tokens."""
        kwargs: dict = {"use_cache": False}
        if attention_mask is not None:
            mask = attention_mask.to(torch.long)
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = positions(mask)
        return self.model(input_ids=input_ids, **kwargs).logits

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """Weights (safetensors), config and tokenizer: a folder vLLM and `load_causal_policy` read."""
        path = Path(path)
        if state_dict is not None:
            state_dict = dict(state_dict)  # transformers empties the dict it is given as it writes
        self.model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] counting real tokens from 0 (padding gets 0; it is never attended to)."""
    mask = attention_mask.to(torch.long)
    return (mask.cumsum(-1) - 1).clamp(min=0)


def build_tiny_causal_policy(
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    initializer_range: float = 0.02,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> CausalPolicy:
    """A freshly initialised tiny causal Llama with the character tokenizer (deterministic per seed).

    The same shapes as `dllm.tiny.build_tiny_policy` give the same parameter count, so the two
    are a fair pair. A larger `initializer_range` (e.g. 0.15) gives context-dependent predictions,
    which token-agreement tests need (the default init predicts nearly one token everywhere).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from dllm.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(dtype)
    return CausalPolicy(
        model, tokenizer, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id
    ).eval()


def load_causal_policy(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
) -> CausalPolicy:
    """Any causal LM checkpoint (folder or hub name) through `AutoModelForCausalLM`.

    A folder written by the tiny diffusion model (`is_causal: false`) is refused: its attention is
    bidirectional, so reading it as a causal LM would silently give a different model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    local = Path(name_or_path)
    if local.exists():
        config_file = local / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"{local} has no config.json: not a model checkpoint folder")
        if json.loads(config_file.read_text()).get("is_causal", True) is False:
            raise ValueError(f"{local} is a bidirectional (diffusion) model: use dllm.load_policy")
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    if isinstance(eos_id, list):  # some configs list several; the first is the tokenizer's own
        eos_id = eos_id[0]
    if eos_id is None:
        raise ValueError(f"{name_or_path} defines no EOS token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    return CausalPolicy(model, tokenizer, eos_id=eos_id, pad_id=pad_id).to(device=dev).eval()


def pack_prompt_response(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_id: int,
    response_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [N, P+L], attention_mask [N, P+L]): left-padded prompts ++ responses padded on
    the right to L (default: the longest). Right padding is masked out; causal attention means it
    cannot change any earlier position anyway."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    width = max(len(p) for p in prompts)
    length = max(len(r) for r in responses) if response_length is None else response_length
    ids = torch.full((len(prompts), width + length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty")
        if len(response) > length:
            raise ValueError(f"response {row} has {len(response)} tokens, more than L={length}")
        ids[row, width - len(prompt) : width] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) : width] = 1
        if response:
            ids[row, width : width + len(response)] = torch.tensor(list(response), dtype=torch.long)
            mask[row, width : width + len(response)] = 1
    return ids, mask


def response_logprobs(
    policy: CausalPolicy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log pi(y_i | prompt, y_<i) for the last `response_length` tokens of each row: [N, L] float32+.

    `temperature` > 0 divides the logits first, so the log-probs are those of the distribution the
    sampler drew from; 0 (greedy) uses the raw logits. Padded response positions get a value too
    (the log-prob of the pad token): the caller masks them (learner.grpo.completion_mask).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = policy(input_ids, attention_mask=attention_mask)
    # The logits at t predict t + 1: positions T-L-1 .. T-2 predict the L response tokens.
    logits = logits[:, -response_length - 1 : -1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature > 0:
        logits = logits / temperature
    targets = input_ids[:, -response_length:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
