"""diffu-GRPO (d1, Zhao et al. 2025): the one-step per-token log-prob estimator (bgpo.md section 8).

One forward per response: the whole completion is masked and each real prompt token is masked
independently with probability p (0.15); log p(y_i | that sequence) for every response token i
is the per-token estimate of log pi. One prompt mask is drawn per inner iteration and shared by
the old, reference and gradient passes of that iteration (common random numbers, as in d1).

The loss averages over the completion tokens up to and including the first EOS (`completion_mask`)
and uses mean-only group advantages, both as d1 does. This module draws prompt masks, evaluates
per-token log-probs and marks the counted tokens; the clipped objective is
`objectives.diffu_grpo_objective`, and the inner-iteration loop lives in the worker.
"""

from __future__ import annotations

import torch

from learner.batch import TrainBatch


def draw_prompt_masks(
    attention_mask: torch.Tensor,
    response_length: int,
    prob: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BoolTensor [N, T - L]: each real prompt token masked with probability `prob`; padding never."""
    prompt_real = attention_mask[:, : attention_mask.shape[1] - response_length].bool().cpu()
    draws = torch.rand(prompt_real.shape, generator=generator) < prob
    return draws & prompt_real


def completion_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """BoolTensor [N, L]: the completion up to and including its first EOS (all of it without
    one), the tokens d1's loss averages over (`diffu_grpo_trainer.py` at 837888f)."""
    is_eos = response_ids == eos_id
    length = response_ids.shape[1]
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full_like(is_eos[:, 0], length, dtype=torch.long))
    return torch.arange(length, device=response_ids.device).unsqueeze(0) <= first.unsqueeze(1)


def token_logps(
    policy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prompt_masks: torch.Tensor,
    response_length: int,
) -> torch.Tensor:
    """log p(y_i | prompt with `prompt_masks` masked, completion fully masked): [N, L]."""
    n, width = input_ids.shape
    prompt_width = width - response_length
    prompt = input_ids[:, :prompt_width]
    prompt = torch.where(
        prompt_masks.to(prompt.device), torch.full_like(prompt, policy.mask_id), prompt
    )
    masked_response = torch.full(
        (n, response_length), policy.mask_id, dtype=input_ids.dtype, device=input_ids.device
    )
    logits = policy(
        torch.cat([prompt, masked_response], dim=1), attention_mask=attention_mask
    ).logits
    logits = logits[:, prompt_width:]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = input_ids[:, prompt_width:]
    logp = -torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), reduction="none"
    )
    return logp.view(n, response_length)


@torch.no_grad()
def token_logps_no_grad(
    policy, batch: TrainBatch, prompt_masks: torch.Tensor, *, micro_batch_size: int
) -> torch.Tensor:
    """`token_logps` for the whole batch in micro-batches, without grad: [N, L]."""
    parts = []
    for start in range(0, len(batch), micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        parts.append(
            token_logps(
                policy,
                batch.input_ids[rows],
                batch.attention_mask[rows],
                prompt_masks[rows],
                batch.response_length,
            )
        )
    return torch.cat(parts)
