"""The Monte Carlo ELBO terms of a masked-diffusion policy (bgpo.md section 2).

For a response y of L tokens and a mask M_j (a subset of the L response positions),

    ell_j(theta) = (1 / |M_j|) * sum_{i in M_j} log p_theta(y_i | y with M_j masked, x)

and B(theta) = mean_j ell_j is the per-token ELBO estimate. The masks are stratified over the
number of masked tokens and drawn once per rollout batch; the same masks serve the behaviour
(old) pass and every gradient pass (common random numbers), so z_j = 0 exactly on-policy.

This module draws masks and evaluates ell_j for a chunk of masks per forward; it does not
decide what to do with the terms (objectives.py) nor run backward passes (worker.py).
"""

from __future__ import annotations

import torch

from learner.batch import TrainBatch


def stratified_mask_counts(
    n: int, n_t: int, response_length: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """LongTensor [n, n_t] of masked-token counts l_j in 1..L (bgpo.md section 2).

    k ~ U{1..L} per response;  l_j = ((round(k + j*L/n_t) - 1) mod L) + 1,  j = 0..n_t-1.
    `round` is round-half-to-even (Python's and torch's), computed in float64.
    """
    if n_t < 1 or response_length < 1:
        raise ValueError(f"n_t and L must be positive, got n_t={n_t}, L={response_length}")
    k = torch.randint(1, response_length + 1, (n, 1), generator=generator, dtype=torch.long)
    j = torch.arange(n_t, dtype=torch.float64)
    shifted = torch.round(k.to(torch.float64) + j * (response_length / n_t)).to(torch.long)
    return torch.remainder(shifted - 1, response_length) + 1


def draw_masks(
    n: int, n_t: int, response_length: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """BoolTensor [n, n_t, L]: mask j of response s is a uniform subset of size l_j (True = masked).

    Only response positions exist in this tensor, so the prompt is never masked.
    """
    counts = stratified_mask_counts(n, n_t, response_length, generator)
    scores = torch.rand((n, n_t, response_length), generator=generator)
    # The rank of each position in a random permutation; the l_j lowest ranks are masked.
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    return ranks < counts.unsqueeze(-1)


def _promoted(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax in at least float32 (bf16 logits are upcast; float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def elbo_terms(
    policy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    masks: torch.Tensor,
    response_length: int,
) -> torch.Tensor:
    """ell_j for each row and mask, one forward for all of them (with grad if grad is enabled).

    input_ids [N, T] (response = last L), attention_mask [N, T] or None, masks [N, L] -> [N] or
    [N, c, L] -> [N, c]. The c masked copies of a row are stacked into one batch of N*c sequences.
    Padding is never masked (masks cover the response only) and never counted.
    """
    squeeze = masks.dim() == 2
    if squeeze:
        masks = masks.unsqueeze(1)
    n, c, length = masks.shape
    if length != response_length or input_ids.shape[0] != n:
        raise ValueError(
            f"masks {tuple(masks.shape)} do not fit input_ids {tuple(input_ids.shape)}, L={response_length}"
        )
    counts = masks.sum(dim=-1)  # [N, c] = l_j
    if bool((counts == 0).any()):
        raise ValueError("every mask must cover at least one response token (l_j >= 1)")
    masks = masks.to(input_ids.device)
    seqs = input_ids.unsqueeze(1).expand(n, c, -1).reshape(n * c, -1)
    prompt_width = seqs.shape[1] - response_length
    flat_masks = masks.reshape(n * c, response_length)
    targets = seqs[:, prompt_width:]
    noisy_response = torch.where(flat_masks, torch.full_like(targets, policy.mask_id), targets)
    noisy = torch.cat([seqs[:, :prompt_width], noisy_response], dim=1)
    att = None
    if attention_mask is not None:
        att = attention_mask.unsqueeze(1).expand(n, c, -1).reshape(n * c, -1)
    logits = policy(noisy, attention_mask=att).logits[:, prompt_width:]  # [N*c, L, V]
    # Only the masked positions' log-probs are needed: select them before the log-softmax.
    rows = flat_masks.nonzero(as_tuple=True)[0]
    token_logp = -torch.nn.functional.cross_entropy(
        _promoted(logits[flat_masks]), targets[flat_masks], reduction="none"
    )
    sums = torch.zeros(n * c, dtype=token_logp.dtype, device=token_logp.device)
    sums = sums.index_add(0, rows, token_logp)
    ell = sums.view(n, c) / counts.to(sums.dtype)
    return ell.squeeze(1) if squeeze else ell


@torch.no_grad()
def old_terms(
    policy,
    batch: TrainBatch,
    masks: torch.Tensor,
    *,
    micro_batch_size: int,
    mc_chunk: int = 1,
) -> torch.Tensor:
    """ell_j(theta_old) for every row of `batch` and mask, no grad: [N, n_t] (bgpo.md section 5)."""
    return terms_no_grad(policy, batch.input_ids, batch.attention_mask, batch.response_length, masks,
                         micro_batch_size=micro_batch_size, mc_chunk=mc_chunk)


@torch.no_grad()
def terms_no_grad(
    policy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    masks: torch.Tensor,
    *,
    micro_batch_size: int,
    mc_chunk: int = 1,
) -> torch.Tensor:
    """ell_j for every row and mask in micro-batches and MC chunks, without grad: [N, n_t].

    Works with any Policy (the learner's, or a rollout worker's copy in asynchronous mode);
    `masks` [N, n_t, L] are the ones the gradient passes will reuse.
    """
    n, n_t, _ = masks.shape
    # ell is computed in at least float32 (see _promoted); keep ell_old in the same precision.
    out = torch.empty(
        (n, n_t), dtype=torch.promote_types(policy.dtype, torch.float32), device=input_ids.device
    )
    for start in range(0, n, micro_batch_size):
        rows = slice(start, min(start + micro_batch_size, n))
        for j0 in range(0, n_t, mc_chunk):
            cols = slice(j0, min(j0 + mc_chunk, n_t))
            out[rows, cols] = elbo_terms(
                policy, input_ids[rows], attention_mask[rows], masks[rows, cols], response_length
            )
    return out
