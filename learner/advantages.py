"""GRPO group-relative advantages (bgpo.md section 3).

For the G responses of one prompt (one group id):  A_k = (r_k - mean(r)) / (std(r) + 1e-6),
with the unbiased standard deviation; with `scale=False`, A_k = r_k - mean(r) (d1's diffu-GRPO,
`diffu_grpo_trainer.py` at 837888f, which leaves the division out). A group of one response, or one whose rewards are all
equal, carries no signal and gets A = 0. A NaN reward propagates to its whole group (so the
learner's non-finite check skips the step instead of silently training on it).

Groups must be whole on the rank that normalises them; the cluster either keeps groups on one
learner rank or computes advantages before sharding and passes them in the `TrainBatch`.
"""

from __future__ import annotations

import torch

STD_EPS = 1e-6


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: bool = True
) -> torch.Tensor:
    """rewards [N] float, group_ids [N] long -> advantages [N] float64."""
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be [N]"
        )
    r = rewards.to(torch.float64)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    size = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add(
        0, inverse, torch.ones_like(r)
    )
    mean = torch.zeros_like(size).index_add(0, inverse, r) / size
    centred = r - mean[inverse]
    sq = torch.zeros_like(size).index_add(0, inverse, centred * centred)
    std = torch.sqrt(sq / (size - 1).clamp(min=1))  # unbiased; a group of one has sq = 0
    adv = centred / (std[inverse] + STD_EPS) if scale else centred
    # Groups of one, or with equal rewards, carry no preference: exactly zero (not ~1e-12 noise).
    flat = (size[inverse] < 2) | (std[inverse] == 0)
    return torch.where(flat & torch.isfinite(r), torch.zeros_like(adv), adv)
