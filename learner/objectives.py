"""Policy objectives as pure functions of typed tensors, registered by name.

- `bgpo`: the BGPO lower bound, one term per MC sample (bgpo.md section 4). Linear in the MC
  samples, so the learner back-propagates each sample alone and memory does not grow with n_t.
- `elbo_ratio`: the exact objective A * exp(B - B_old) (section 3) with all n_t graphs retained;
  the reference for the equivalence test and the memory comparison (section 8).
- `diffu_grpo`: d1's one-step per-token estimator with a token-level clipped ratio and a KL
  penalty to a reference policy (section 8).
- `grpo`: GRPO for causal (autoregressive) policies, the baseline the diffusion policies are
  compared against; its terms are `learner.grpo.grpo_objective`, its step `learner.grpo_step`.

Every function returns the quantity to MAXIMISE per response (or per token); the learner negates
and weights it. This module computes no forward pass and no gradient step (worker.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _broadcast(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """advantages [N] against a per-sample tensor [N] or [N, c]."""
    adv = advantages.to(like.dtype)
    return adv.view(-1, *([1] * (like.dim() - 1)))


def bgpo_bound(ell: torch.Tensor, ell_old: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """g_j per response (bgpo.md section 4); ell, ell_old [N] (or [N, c]), advantages [N] -> same as ell.

        z = ell - ell_old;   g = A * (1 + z)  if A >= 0   (tangent line of exp at 0)
                             g = A * exp(z)   if A <  0   (Jensen)
    1 + z is computed directly: exp(log(1 + z)) would be NaN for z <= -1.
    """
    z = ell - ell_old
    adv = _broadcast(advantages, ell)
    return torch.where(adv >= 0, adv * (1 + z), adv * _exp_where_negative(z, adv))


def _exp_where_negative(z: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """exp(z) on A < 0 entries, 1 elsewhere: the discarded branch of torch.where must stay finite,
    or a large z on an A >= 0 row would put inf * 0 = NaN into the gradient."""
    return torch.exp(torch.where(adv < 0, z, torch.zeros_like(z)))


def clipped_bgpo_bound(
    ell: torch.Tensor,
    ell_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-style clipping of the bound's ratio for stale samples: (g [like ell], clipped [bool]).

    ratio = g / A (1 + z or exp(z)); surrogate = min(A*ratio, A*clip(ratio, 1-eps, 1+eps)), and for
    A < 0 the dual clip keeps it >= dual_clip * A. On-policy ratio = 1 and both clips are inert
    (value and gradient equal the unclipped bound). Clipped, it is no longer a bound on J.
    """
    z = ell - ell_old
    adv = _broadcast(advantages, ell)
    ratio = torch.where(adv >= 0, 1 + z, _exp_where_negative(z, adv))
    unclipped = adv * ratio
    surrogate = torch.minimum(unclipped, adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    clipped = surrogate < unclipped
    if dual_clip is not None:
        floor = dual_clip * adv
        dual = (adv < 0) & (surrogate < floor)
        surrogate = torch.where(dual, floor, surrogate)
        clipped = clipped | dual
    return surrogate, clipped


def elbo_ratio_objective(
    ell: torch.Tensor, ell_old: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """A * exp(mean_j (ell_j - ell_old_j)) per response: [N, n_t], [N, n_t], [N] -> [N] (section 3).

    Non-linear in the MC samples: its gradient needs every sample's graph at once.
    """
    mean_z = (ell - ell_old).mean(dim=-1)
    return advantages.to(ell.dtype) * torch.exp(mean_z)


def diffu_grpo_objective(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    clip_eps: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """d1's token-level objective: logp, old_logp, ref_logp [N, L], advantages [N] -> ([N, L], clipped).

    ratio = exp(logp - old_logp); surrogate = min(ratio*A, clip(ratio, 1-eps, 1+eps)*A);
    objective = surrogate - beta * KL, with the k3 estimator KL = exp(ref - logp) - (ref - logp) - 1.
    """
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    surrogate = torch.minimum(unclipped, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    clipped = surrogate < unclipped
    if ref_logp is None or beta == 0:
        return surrogate, clipped
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1
    return surrogate - beta * kl, clipped


@dataclass(frozen=True)
class Objective:
    """A registered objective and what it needs from the rest of the system, so that callers
    (the learner's loop, the cluster) ask the objective instead of naming it."""

    name: str
    # "per_sample": one backward per MC chunk (linear in samples); "retained": all n_t graphs of a
    # micro-batch then one backward; "one_step": per-token one-forward estimator, inner iterations;
    # "causal": exact token log-probs of a causal policy, one backward per micro-batch (grpo_step.py).
    accumulation: str
    behaviour_terms: bool  # needs MC masks and ell_old of the behaviour policy (learner/behaviour.py)
    scale_advantages: bool  # group advantages divided by the group's std (False: d1's mean-only)
    reference_policy: bool  # keeps a frozen reference policy when its KL weight is > 0
    # uses the sampler's per-token log-probs as old log-probs for stale rollouts (TrainBatch.old_logprobs)
    rollout_logprobs: bool = False
    policy_kind: str = "diffusion"  # the model it trains: "diffusion" (masked) or "causal"


OBJECTIVES: dict[str, Objective] = {
    "bgpo": Objective("bgpo", "per_sample", behaviour_terms=True, scale_advantages=True,
                      reference_policy=False),
    "elbo_ratio": Objective("elbo_ratio", "retained", behaviour_terms=True, scale_advantages=True,
                            reference_policy=False),
    "diffu_grpo": Objective("diffu_grpo", "one_step", behaviour_terms=False, scale_advantages=False,
                            reference_policy=True),
    "grpo": Objective("grpo", "causal", behaviour_terms=False, scale_advantages=True,
                      reference_policy=True, rollout_logprobs=True, policy_kind="causal"),
}


def get_objective(name: str) -> Objective:
    """The registered objective called `name` (KeyError naming the choices otherwise)."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}") from None
