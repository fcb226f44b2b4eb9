"""GRPO for causal policies (DeepSeekMath, Shao et al. 2024): a pure function of token log-probs.

For response i with completion tokens t = 1..|o_i| (up to and including the first EOS):

    r_it   = exp(logp_it - old_logp_it)                                  token-level ratio
    s_it   = min(r_it * A_i, clip(r_it, 1 - eps_low, 1 + eps_high) * A_i)  clipped surrogate
    kl_it  = exp(ref_it - logp_it) - (ref_it - logp_it) - 1              k3 estimator, >= 0
    J_i    = (1 / |o_i|) * sum_t (s_it - beta * kl_it)                   token mean per response

J_i is returned per response (the quantity to MAXIMISE); the learner averages it over the batch
and negates it. Advantages come in (learner.advantages.group_advantages); log-probs come in
(dllm.causal.response_logprobs for the learner, the sampler's own for old_logp). Positions after
the first EOS are masked out of the value and out of the gradient. This module runs no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GRPOTerms:
    """What `grpo_objective` returns; N responses of L response positions."""

    objective: torch.Tensor  # [N]; J_i, token mean over the completion (0 for an empty completion)
    per_token: torch.Tensor  # [N, L]; s_it - beta * kl_it on completion tokens, 0 elsewhere
    clipped: torch.Tensor  # [N, L] bool; the clipped branch of the min was taken (completion only)
    kl: torch.Tensor | None  # [N]; token mean of k3 over the completion, None without a reference
    ratio: torch.Tensor  # [N, L]; r_it on completion tokens, 1 elsewhere (for metrics)


def completion_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Bool [N, L]: True up to and including each row's first EOS (all L tokens if none)."""
    is_eos = response_ids == eos_id
    # EOS tokens strictly before position t: zero up to and including the first EOS.
    before = is_eos.to(torch.long).cumsum(dim=-1) - is_eos.to(torch.long)
    return before == 0


def grpo_objective(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
) -> GRPOTerms:
    """GRPO terms: logp, old_logp, ref_logp, mask [N, L]; advantages [N] (see the module docstring).

    `clip_eps_high` defaults to `clip_eps` (symmetric clip; DAPO's clip-higher sets it larger).
    `beta` > 0 needs `ref_logp`. old_logp and ref_logp are constants (no gradient flows into them).
    """
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must all be [N, L]"
        )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [N={logp.shape[0]}]")
    if beta < 0 or clip_eps < 0:
        raise ValueError(f"beta ({beta}) and clip_eps ({clip_eps}) must be >= 0")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference policy's token log-probs)")
    if ref_logp is not None and ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp {tuple(ref_logp.shape)} != logp {tuple(logp.shape)}")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.to(torch.bool)
    zero = torch.zeros_like(logp)
    # Padding positions may hold anything (old_logp = 0 from a sampler): zero the exponent there
    # before exp, so neither the value nor the gradient sees an overflow (0 * inf = NaN).
    delta = torch.where(mask, logp - old_logp.detach(), zero)
    ratio = torch.exp(delta)
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    unclipped = ratio * adv
    surrogate = torch.minimum(unclipped, ratio.clamp(1 - clip_eps, 1 + eps_high) * adv)
    clipped = (surrogate < unclipped) & mask
    per_token = surrogate
    kl_mean = None
    count = mask.sum(dim=-1).clamp(min=1).to(logp.dtype)
    if ref_logp is not None:
        ref_delta = torch.where(mask, ref_logp.detach() - logp, zero)
        kl = torch.exp(ref_delta) - ref_delta - 1
        kl_mean = (kl * mask).sum(dim=-1) / count
        per_token = per_token - beta * kl
    per_token = torch.where(mask, per_token, zero)
    return GRPOTerms(
        objective=per_token.sum(dim=-1) / count,
        per_token=per_token,
        clipped=clipped,
        kl=kl_mean,
        ratio=ratio.detach(),
    )
