"""The behaviour policy's side of the bound: MC masks and ell_old, one contract for both modes.

BGPO needs, for every response, n_t masks and the ELBO terms ell_j(theta_old) of the policy that
generated it (bgpo.md sections 2 and 5). Whoever holds that policy computes them with
`behaviour_terms`: the learner itself in synchronous mode (its weights are the behaviour policy),
the rollout worker that sampled the response in asynchronous mode. Masks depend only on
(run seed, step, group id, sample index) through `sample_masks`, never on pool sizes, placement,
batching or which of the two computes them, so a run's masks are the same whatever its layout.

This module draws masks and evaluates ell_old; it does not decide how they are used (objectives.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from learner.batch import pad_sequences
from learner.elbo import draw_masks, terms_no_grad


@dataclass(frozen=True)
class MaskSpec:
    """How the MC masks of a step are drawn: n_t masks per response from the run's seed."""

    n_t: int  # masks per response
    seed: int  # the run seed


@dataclass
class BehaviourTerms:
    """Masks and ell_old for N responses, as numpy so they cross Ray without pickling tensors."""

    masks: np.ndarray  # [N, n_t, L] bool; True = masked
    ell_old: np.ndarray  # [N, n_t] float; ell_j under the behaviour policy for `masks`


def mask_seed(seed: int, step: int, group_id: int, sample_index: int) -> int:
    """A stable 63-bit seed for one response's masks (Python's hash() is salted per process)."""
    digest = hashlib.sha256(f"masks|{seed}|{step}|{group_id}|{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_masks(
    spec: MaskSpec,
    step: int,
    group_ids: Sequence[int],
    sample_indices: Sequence[int],
    response_length: int,
) -> torch.Tensor:
    """BoolTensor [N, n_t, L]: each response's masks from its own generator (draw_masks per row)."""
    if len(group_ids) != len(sample_indices):
        raise ValueError(f"{len(group_ids)} group ids for {len(sample_indices)} sample indices")
    rows = [
        draw_masks(1, spec.n_t, response_length,
                   torch.Generator().manual_seed(mask_seed(spec.seed, step, int(g), int(j))))
        for g, j in zip(group_ids, sample_indices, strict=True)
    ]
    return torch.cat(rows) if rows else torch.zeros((0, spec.n_t, response_length), dtype=torch.bool)


@torch.no_grad()
def behaviour_terms(
    policy,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    spec: MaskSpec,
    step: int,
    group_ids: Sequence[int],
    sample_indices: Sequence[int],
    micro_batch_size: int,
    mc_chunk: int = 1,
) -> BehaviourTerms:
    """Masks and ell_old of these responses under `policy`, the behaviour policy that sampled them
    (a rollout worker's copy in asynchronous mode). Rows are left-padded as the learner pads them."""
    input_ids, attention_mask, length = pad_sequences(prompts, responses, policy.pad_id)
    masks = sample_masks(spec, step, group_ids, sample_indices, length)
    device = policy.device
    ell = terms_no_grad(policy, input_ids.to(device), attention_mask.to(device), length, masks.to(device),
                        micro_batch_size=micro_batch_size, mc_chunk=mc_chunk)
    return BehaviourTerms(masks=masks.numpy(), ell_old=ell.cpu().numpy())
