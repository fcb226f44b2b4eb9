"""Supervised warm starts of the tiny models before RL: one loss per kind of policy.

Diffusion policies (LLaDA's SFT loss): for each (prompt, response) pair draw t ~ U(t_min, 1), mask
every response token independently with probability t (the prompt is never masked) and minimise
the cross-entropy of the masked tokens weighted by 1/t, averaged over the response length (LLaDA,
eq. for SFT). This is the forward process the RL phase later estimates the ELBO of.

Causal policies (the autoregressive baseline): next-token cross-entropy of the response given the
prompt, averaged over the completion (the target and its first EOS; the EOS padding after it is
never sampled, so it is not trained). Same examples, steps, batch size and learning rate as the
diffusion warm start, so both kinds start RL from a comparable point.
Neither is an RL objective; `warm_start` runs the loop for either (`supervised_loss` picks).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dllm import Policy


def masked_diffusion_loss(
    policy: Policy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    *,
    generator: torch.Generator | None = None,
    t_min: float = 0.05,
) -> torch.Tensor:
    """Mean over the batch of (1/t) * sum_masked CE / L for left-padded [N, T] sequences."""
    n = input_ids.shape[0]
    L = response_length
    t = t_min + (1 - t_min) * torch.rand(n, 1, generator=generator, device=input_ids.device)
    masked = torch.rand(n, L, generator=generator, device=input_ids.device) < t
    noisy = input_ids.clone()
    noisy[:, -L:] = torch.where(masked, torch.full_like(noisy[:, -L:], policy.mask_id), noisy[:, -L:])
    logits = policy(noisy, attention_mask=attention_mask).logits[:, -L:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), input_ids[:, -L:].reshape(-1), reduction="none")
    per_seq = (ce.view(n, L) * masked).sum(-1) / L / t.squeeze(-1)
    return per_seq.mean()


def next_token_loss(
    policy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over the completion tokens (up to and including the first EOS) of -log pi(y_t | x, y_<t)
    for a causal policy (dllm.causal.CausalPolicy); `generator` is unused (the loss draws nothing)."""
    from dllm.causal import response_logprobs
    from learner.grpo import completion_mask

    logp = response_logprobs(policy, input_ids, attention_mask, response_length)
    counted = completion_mask(input_ids[:, -response_length:], policy.eos_id)
    return -(logp * counted).sum() / counted.sum().clamp(min=1)


def supervised_loss(policy) -> Callable[..., torch.Tensor]:
    """The warm-start loss for this kind of policy: next-token CE for a causal policy (`kind`
    "causal"), the masked-diffusion loss otherwise."""
    return next_token_loss if getattr(policy, "kind", None) == "causal" else masked_diffusion_loss


def warm_start(
    policy: Policy,
    examples: tuple[torch.Tensor, torch.Tensor],
    response_length: int,
    *,
    seconds: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    max_steps: int | None = None,
    log_every: int = 50,
    log=print,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> dict:
    """Train on (input_ids [N, T], attention_mask [N, T]) for `max_steps` steps and/or `seconds`.
    `loss_fn` defaults to `supervised_loss(policy)`."""
    if seconds is None and max_steps is None:
        raise ValueError("warm_start needs max_steps or seconds")
    seconds = float("inf") if seconds is None else seconds
    input_ids, attention_mask = examples
    loss_fn = loss_fn or supervised_loss(policy)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    policy.train()
    start, step, loss_ema = time.perf_counter(), 0, None
    while time.perf_counter() - start < seconds and (max_steps is None or step < max_steps):
        idx = torch.randint(0, input_ids.shape[0], (batch_size,), generator=gen)
        loss = loss_fn(policy, input_ids[idx], attention_mask[idx], response_length, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if log_every and step % log_every == 0:
            log(f"[warmup] step {step} loss {loss_ema:.4f} ({time.perf_counter() - start:.0f}s)")
    policy.eval()
    return {"warmup/steps": step, "warmup/loss": loss_ema, "warmup/seconds": time.perf_counter() - start}
