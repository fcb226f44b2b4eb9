"""LLaDA's masked-diffusion sampler (bgpo.md section 7), batched, seeded, with Fast-dLLM switches.

`generate` appends `gen_length` mask tokens to the prompts and unmasks them block by block, left to
right (semi-autoregressive). Each step runs the model (one forward), proposes a token for every
masked position of the current block (argmax, or Gumbel-max at temperature > 0 in LLaDA's float64
form) and commits the k most confident of them, k from the per-block transfer schedule; committed
tokens are never remasked. With the defaults, equal-length prompts and temperature 0 it gives
token-for-token what LLaDA's reference `generate` gives.

Where it differs from the reference by design:
- Noise and confidences are computed for the current block only (outside the block they never
  matter): this saves a float64 [B, T, V] tensor per step, and with one generator per row
  (`generator=[g_0, ..., g_{B-1}]`) makes every row independent of padding and batch company.
- Ties between equal confidences go to the lower position (stable sort), the same on every device.
- Positions outside the current block are never candidates (bgpo.md 7.4), also when a token was
  committed as the mask id itself in an earlier block; such leftover masks become EOS at the end.
Accelerations (off by default): `cache="prefix"|"dual"` (rollout.kv_cache) and `threshold`
(commit every masked token of the block with confidence > threshold, at least one per step).
This module has no Ray, no weights handling, no tokenizer: ids in, ids out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rollout.config import validate_sampling
from rollout.kv_cache import make_block_forward
from rollout.types import GenerationStats

Generators = torch.Generator | Sequence[torch.Generator] | None


def transfer_schedule(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit at each step of a block: [B] masked counts -> [B, steps] (bgpo.md 7.2).

    The n masked tokens are split evenly; the first n mod steps steps take one more.
    """
    counts = mask_count.to(torch.long).reshape(-1, 1)
    base, remainder = counts // steps, counts % steps
    step_index = torch.arange(steps, device=counts.device).unsqueeze(0)
    return base + (step_index < remainder).to(torch.long)


class _Noise:
    """Uniform draws for Gumbel noise and random remasking, per batch or per row."""

    def __init__(self, generator: Generators, batch_size: int, device: torch.device) -> None:
        self.per_row = generator is not None and not isinstance(generator, torch.Generator)
        if self.per_row and len(generator) != batch_size:
            raise ValueError(f"{len(generator)} generators for a batch of {batch_size} rows")
        self.generator = generator
        self.batch_size = batch_size
        self.device = device

    def uniform(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """U(0, 1) of shape [B, *shape]; a per-row generator draws exactly its own row."""
        if not self.per_row:
            gen = self.generator
            device = gen.device if gen is not None else self.device
            out = torch.rand((self.batch_size, *shape), generator=gen, dtype=dtype, device=device)
            return out.to(self.device)
        rows = [
            torch.rand(shape, generator=g, dtype=dtype, device=g.device) for g in self.generator
        ]
        return torch.stack(rows).to(self.device)


def propose_tokens(logits: torch.Tensor, temperature: float, noise: _Noise) -> torch.Tensor:
    """x0 = argmax(exp(logits) / (-log U)^temperature) in float64 (LLaDA's Gumbel-max, 7.3)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits64 = logits.to(torch.float64)
    u = noise.uniform(tuple(logits.shape[1:]), torch.float64)
    return (logits64.exp() / (-torch.log(u)) ** temperature).argmax(dim=-1)


def confidence_of(
    logits: torch.Tensor,
    x0: torch.Tensor,
    remasking: str,
    noise: _Noise,
    *,
    eos_id: int | None,
    eval_mode: bool,
) -> torch.Tensor:
    """Confidence of each proposal (bgpo.md 7.4): softmax prob. of x0 (no noise), or uniform."""
    if remasking == "random":
        return noise.uniform(tuple(x0.shape[1:]), torch.float32).to(torch.float64)
    if remasking != "low_confidence":
        raise ValueError(f"unknown remasking {remasking!r}")
    probs = F.softmax(logits.to(torch.float64), dim=-1)
    conf = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    if eval_mode:
        # At evaluation a predicted EOS is committed last, so answers are not cut short.
        conf = torch.where(x0 == eos_id, torch.zeros_like(conf), conf)
    return conf


def select_transfer(
    confidence: torch.Tensor,
    masked: torch.Tensor,
    k: torch.Tensor | None,
    threshold: float | None,
) -> torch.Tensor:
    """Which masked positions of the block to commit: [B, Lb] bool (bgpo.md 7.5).

    With `k` ([B]): the k most confident masked positions. With `threshold`: every masked position
    with confidence > threshold, and always the most confident one (Fast-dLLM parallel decoding).
    """
    conf = torch.where(masked, confidence, torch.full_like(confidence, -torch.inf))
    order = conf.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
    if threshold is None:
        chosen = rank < k.unsqueeze(1)
    else:
        chosen = (conf > threshold) | (rank == 0)
    return chosen & masked


def _initial_canvas(prompt_ids, attention_mask, gen_length, mask_id):
    """x = prompt + L masks; the mask (and position ids) extended over the response."""
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    masks = torch.full((batch, gen_length), mask_id, dtype=torch.long, device=device)
    x = torch.cat([prompt_ids.to(torch.long), masks], dim=1)
    if attention_mask is None:
        full_mask = None
        position_ids = torch.arange(x.shape[1], device=device).expand(batch, -1)
    else:
        if attention_mask.shape != prompt_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} != prompt_ids {tuple(prompt_ids.shape)}"
            )
        ones = torch.ones((batch, gen_length), dtype=torch.long, device=device)
        full_mask = torch.cat([attention_mask.to(device=device, dtype=torch.long), ones], dim=1)
        # Positions start at 0 on each row's first real token (left padding, as dllm.Policy does).
        position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
    return x, full_mask, position_ids


def _denoise_block(x, start, end, forward, schedule, opts, noise) -> None:
    """Unmask x[:, start:end] in place: one forward per step until no mask is left or the plan ends."""
    threshold = opts["threshold"]
    max_steps = schedule.shape[1] if threshold is None else end - start
    for step in range(max_steps):
        masked = x[:, start:end] == opts["mask_id"]
        if not bool(masked.any()):
            break
        logits = forward(x, start, end, first_step=step == 0)
        x0 = propose_tokens(logits, opts["temperature"], noise)
        conf = confidence_of(
            logits, x0, opts["remasking"], noise, eos_id=opts["eos_id"], eval_mode=opts["eval_mode"]
        )
        k = schedule[:, step] if threshold is None else None
        chosen = select_transfer(conf, masked, k, threshold)
        block = x[:, start:end]
        x[:, start:end] = torch.where(chosen, x0, block)


@torch.no_grad()
def generate_with_stats(
    model,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    eval_mode: bool = False,
    generator: Generators = None,
    cache: str = "none",
    threshold: float | None = None,
) -> tuple[torch.Tensor, GenerationStats]:
    """Sample responses: LongTensor [B, P + gen_length] (prompt included) and the call's counters.

    `prompt_ids` [B, P] is left-padded when prompts differ in length, with `attention_mask` [B, P]
    (1 on real tokens); each row then gets what it would get alone (exactly so at temperature > 0
    when `generator` is a list of one generator per row). `generator`: None (global RNG), one
    torch.Generator for the batch, or one per row, on the device the noise should be drawn on.
    """
    validate_sampling(
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        remasking=remasking,
        cache=cache,
        threshold=threshold,
    )
    if eval_mode and eos_id is None:
        raise ValueError("eval_mode needs eos_id (a predicted EOS gets confidence 0)")
    began = time.perf_counter()
    x, full_mask, position_ids = _initial_canvas(prompt_ids, attention_mask, gen_length, mask_id)
    forward = make_block_forward(cache, model, full_mask, position_ids)
    noise = _Noise(generator, x.shape[0], x.device)
    opts = dict(
        mask_id=mask_id, temperature=temperature, remasking=remasking,
        eos_id=eos_id, eval_mode=eval_mode, threshold=threshold,
    )  # fmt: skip
    prompt_len, num_blocks = prompt_ids.shape[1], gen_length // block_length
    for block in range(num_blocks):
        start = prompt_len + block * block_length
        end = start + block_length
        schedule = transfer_schedule((x[:, start:end] == mask_id).sum(dim=1), steps // num_blocks)
        _denoise_block(x, start, end, forward, schedule, opts, noise)
    if eos_id is not None:
        # bgpo.md 7.5: masks left at the end (tokens proposed as the mask id) become EOS.
        response = x[:, prompt_len:]
        response[response == mask_id] = eos_id
    stats = GenerationStats(
        nfe=forward.nfe,
        batch_size=x.shape[0],
        gen_length=gen_length,
        full_forwards=forward.full_forwards,
        seconds=time.perf_counter() - began,
        cache=cache,
        threshold=threshold,
    )
    return x, stats


def generate(
    model,
    prompt_ids: torch.Tensor,
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    eval_mode: bool = False,
    generator: Generators = None,
    cache: str = "none",
    threshold: float | None = None,
) -> torch.Tensor:
    """`generate_with_stats` without the counters: LongTensor [B, P + gen_length]."""
    tokens, _ = generate_with_stats(
        model,
        prompt_ids,
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        remasking=remasking,
        mask_id=mask_id,
        attention_mask=attention_mask,
        eos_id=eos_id,
        eval_mode=eval_mode,
        generator=generator,
        cache=cache,
        threshold=threshold,
    )
    return tokens
