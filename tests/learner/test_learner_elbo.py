"""ELBO estimator: stratified counts (bgpo.md section 2), masks, and the terms ell_j."""

from __future__ import annotations

import copy

import pytest
import torch

from learner import (
    TrainBatch,
    build_train_batch,
    draw_masks,
    elbo_terms,
    old_terms,
    stratified_mask_counts,
)


def test_stratified_counts_match_formula_and_cover_range():
    L, n_t, n = 16, 5, 400
    g = torch.Generator().manual_seed(0)
    counts = stratified_mask_counts(n, n_t, L, g)
    ks = torch.randint(1, L + 1, (n, 1), generator=torch.Generator().manual_seed(0))
    for k, row in zip(ks[:, 0].tolist(), counts.tolist(), strict=True):
        expected = [((round(k + j * L / n_t) - 1) % L) + 1 for j in range(n_t)]
        assert row == expected
    assert set(counts.flatten().tolist()) == set(range(1, L + 1))
    # With n_t = L, the counts of every response are a permutation of 1..L (stratification).
    full = stratified_mask_counts(50, L, L, g)
    assert all(sorted(row) == list(range(1, L + 1)) for row in full.tolist())


def test_masks_have_stratified_sizes_and_are_random_subsets():
    g = torch.Generator().manual_seed(1)
    masks = draw_masks(64, 4, 12, g)
    assert masks.shape == (64, 4, 12) and masks.dtype == torch.bool
    counts = masks.sum(-1)
    assert counts.min() >= 1 and counts.max() <= 12
    # every position gets masked sometimes: the subsets are not a fixed prefix
    assert masks.any(dim=(0, 1)).all()
    g2 = torch.Generator().manual_seed(1)
    assert torch.equal(masks, draw_masks(64, 4, 12, g2))  # reproducible from the generator


def test_elbo_terms_by_hand(policy):
    batch = build_train_batch([[10, 11]], [[20, 21, 22]], [1.0], [0], pad_id=policy.pad_id)
    mask = torch.tensor([[True, False, True]])
    ell = elbo_terms(policy, batch.input_ids, batch.attention_mask, mask, 3)
    noisy = torch.tensor([[10, 11, policy.mask_id, 21, policy.mask_id]])
    logp = torch.log_softmax(policy(noisy).logits, -1)[0]
    expected = (logp[2, 20] + logp[4, 22]) / 2
    assert ell.shape == (1,)
    assert torch.allclose(ell[0], expected, rtol=0, atol=1e-12)


def test_chunked_terms_equal_one_sample_per_forward(policy, batch):
    masks = draw_masks(len(batch), 5, batch.response_length, torch.Generator().manual_seed(2))
    chunk = elbo_terms(policy, batch.input_ids, batch.attention_mask, masks, batch.response_length)
    assert chunk.shape == (len(batch), 5)
    for j in range(5):
        single = elbo_terms(
            policy, batch.input_ids, batch.attention_mask, masks[:, j], batch.response_length
        )
        assert torch.allclose(chunk[:, j], single, rtol=0, atol=1e-12)


def test_padding_invariance(policy, batch):
    """A row's ell terms do not change when it is batched with longer prompts (left padding)."""
    masks = draw_masks(len(batch), 3, batch.response_length, torch.Generator().manual_seed(3))
    together = elbo_terms(
        policy, batch.input_ids, batch.attention_mask, masks, batch.response_length
    )
    assert not bool(batch.attention_mask[0].all())  # row 0 is padded in the batch
    for row in range(len(batch)):
        real = batch.attention_mask[row].bool()
        alone_ids = batch.input_ids[row, real].unsqueeze(0)
        alone = elbo_terms(policy, alone_ids, None, masks[row : row + 1], batch.response_length)
        assert torch.allclose(alone[0], together[row], rtol=0, atol=1e-10)


def test_padding_is_never_masked_or_counted(policy):
    batch = build_train_batch(
        [[7], [7, 8, 9, 10]], [[30, 31], [32, 33]], [0.0, 1.0], [0, 0], pad_id=policy.pad_id
    )
    masks = torch.ones(2, 1, 2, dtype=torch.bool)
    # Changing what sits under the padding changes nothing.
    other = batch.input_ids.clone()
    other[0, :3] = 40
    a = elbo_terms(policy, batch.input_ids, batch.attention_mask, masks, 2)
    b = elbo_terms(policy, other, batch.attention_mask, masks, 2)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_empty_mask_rejected(policy, batch):
    masks = torch.zeros(len(batch), 1, batch.response_length, dtype=torch.bool)
    with pytest.raises(ValueError, match="at least one"):
        elbo_terms(policy, batch.input_ids, batch.attention_mask, masks, batch.response_length)


def test_old_terms_any_policy_micro_batched(policy, batch):
    masks = draw_masks(len(batch), 4, batch.response_length, torch.Generator().manual_seed(4))
    other = copy.deepcopy(policy)  # e.g. a rollout worker's copy of the weights
    ref = elbo_terms(policy, batch.input_ids, batch.attention_mask, masks, batch.response_length)
    got = old_terms(other, batch, masks, micro_batch_size=4, mc_chunk=3)
    assert got.shape == (len(batch), 4) and not got.requires_grad
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)


def test_train_batch_left_pads_and_validates(policy):
    batch = build_train_batch(
        [[5, 6, 7], [8]], [[9, 9], [10, 10]], [0.5, 1.0], [0, 0], pad_id=policy.pad_id
    )
    assert batch.input_ids.tolist() == [[5, 6, 7, 9, 9], [policy.pad_id, policy.pad_id, 8, 10, 10]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert batch.response_length == 2 and batch.global_batch_size == 2
    assert batch.response_ids.tolist() == [[9, 9], [10, 10]]
    with pytest.raises(ValueError, match="share one"):
        build_train_batch([[5], [6]], [[1, 2], [3]], [0, 0], [0, 0], pad_id=0)
    with pytest.raises(ValueError, match="ell_old given without"):
        TrainBatch(**{**vars(batch), "ell_old": torch.zeros(2, 1)})
