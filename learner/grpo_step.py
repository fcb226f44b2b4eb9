"""The GRPO gradient of a causal policy over one batch: micro-batches, one backward each.

For the N responses on this rank (G in the global batch across ranks), at the rollouts' sampling
temperature T:

    logp_it     = log softmax(logits / T)[y_it]          dllm.causal.response_logprobs, with grad
    old_logp_it = batch.old_logprobs                     the sampler's own (stale rollouts)
                  or logp_it, detached                    on-policy: the same weights, ratio 1
    ref_logp_it = the reference policy's, no grad        only when beta > 0
    J_i         = learner.grpo.grpo_objective(...)        clipped surrogate - beta * k3 KL,
                                                          token mean over the completion
    loss        = -sum_i live_i * J_i / G

Each micro-batch back-propagates its own rows' share of the loss at once, so only one
micro-batch's graph is alive at a time and the gradient does not depend on micro_batch_size or on
the number of ranks (J_i depends on row i alone). Ghost rows (sharded padding, `live` False) add
nothing, not even KL. The completion is each response up to and including its first EOS
(`learner.grpo.completion_mask`); the EOS padding after it is neither scored nor trained.

This module computes the gradient and the metric sums; it does not all-reduce, clip or step the
optimizer (learner/worker.py does, as for the other objectives).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm.causal import response_logprobs
from learner.batch import TrainBatch
from learner.config import GRPOConfig
from learner.grpo import completion_mask, grpo_objective


@dataclass
class GRPOSums:
    """Metric sums of one batch on one rank (the worker all-reduces them across ranks)."""

    # [6] float64, the worker's layout (LearnerWorker._stats): loss, sum |log ratio| over the
    # completion tokens, completion tokens, clipped tokens, completion tokens, 0 (rows go in [5])
    core: torch.Tensor
    kl_sum: float  # sum over live responses of the token-mean k3 KL to the reference (0 without one)
    ratio_max: float  # largest token ratio exp(logp - old_logp) seen (1.0 on-policy)


def accumulate_grpo_gradients(
    policy,
    batch: TrainBatch,
    config: GRPOConfig,
    *,
    micro_batch_size: int,
    reference_policy=None,
) -> GRPOSums:
    """Add d(loss)/d(theta) of the batch to `.grad` of the policy's parameters (see the module
    docstring); `.grad` is not zeroed here. Returns the metric sums."""
    if config.beta > 0 and reference_policy is None:
        raise ValueError("learner.grpo.beta > 0 needs a reference policy")
    temperature = 1.0 if config.temperature is None else config.temperature
    core = torch.zeros(6, dtype=torch.float64)
    kl_sum, ratio_max = 0.0, 1.0
    for start in range(0, len(batch), micro_batch_size):
        mb = batch.select(slice(start, start + micro_batch_size))
        L = mb.response_length
        logp = response_logprobs(policy, mb.input_ids, mb.attention_mask, L, temperature=temperature)
        old = logp.detach() if mb.old_logprobs is None else mb.old_logprobs.to(logp.dtype)
        ref = None
        if config.beta > 0:
            with torch.no_grad():
                ref = response_logprobs(
                    reference_policy, mb.input_ids, mb.attention_mask, L, temperature=temperature
                )
        live = mb.live_mask
        # Ghost rows count no token: their advantage is 0, but the KL term would still pull.
        mask = completion_mask(mb.response_ids, policy.eos_id) & live.unsqueeze(1)
        terms = grpo_objective(
            logp, old, mb.advantages, mask, clip_eps=config.clip_eps,
            clip_eps_high=config.clip_eps_high, ref_logp=ref, beta=config.beta,
        )  # fmt: skip
        loss = -(terms.objective * live).sum() / mb.global_batch_size
        loss.backward()  # frees this micro-batch's graph before the next one is built
        log_ratio = (logp.detach() - old)[mask]
        tokens = float(mask.sum())
        core += torch.tensor(
            [float(loss.detach()), float(log_ratio.abs().sum()), tokens,
             float(terms.clipped.sum()), tokens, 0.0],
            dtype=torch.float64,
        )  # fmt: skip
        core[5] += int(live.sum())
        if terms.kl is not None:
            kl_sum += float(terms.kl.detach()[live].sum())
        if bool(mask.any()):
            ratio_max = max(ratio_max, float(terms.ratio[mask].max()))
    return GRPOSums(core, kl_sum, ratio_max)
