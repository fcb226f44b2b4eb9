"""Objectives as pure functions (bgpo.md sections 3, 4, 8) and group advantages."""

from __future__ import annotations

import copy

import pytest
import torch

from learner import (
    bgpo_bound,
    clipped_bgpo_bound,
    diffu_grpo_objective,
    draw_masks,
    elbo_ratio_objective,
    elbo_terms,
    get_objective,
    group_advantages,
)


def test_bgpo_bound_branches():
    ell = torch.tensor([-1.0, -1.0, -2.0], dtype=torch.float64)
    old = torch.tensor([-1.5, -0.5, -2.0], dtype=torch.float64)
    adv = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)
    g = bgpo_bound(ell, old, adv)
    assert g.shape == (3,)
    assert g.tolist() == pytest.approx(
        [2.0 * 1.5, -1.0 * torch.exp(torch.tensor(-0.5)).item(), 0.0]
    )


def test_no_nan_when_z_below_minus_one():
    ell = torch.tensor([-5.0, -9.0, 3.0, 100.0], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([-1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    adv = torch.tensor([1.0, 0.5, -1.0, 1.0], dtype=torch.float64)  # z = -4, -8 with A >= 0
    g = bgpo_bound(ell, old, adv)
    g.sum().backward()
    assert torch.isfinite(g).all() and torch.isfinite(ell.grad).all()
    assert g[:2].tolist() == [1.0 * (1 - 4), 0.5 * (1 - 8)]
    # z = 101 on an A >= 0 row: the unused exp branch must not leak inf/NaN into the gradient
    assert ell.grad[3].item() == 1.0


def test_bound_below_objective_off_policy(make_policy, make_batch):
    """J_lb <= J per response at perturbed weights, for both signs of A (section 4)."""
    old_policy = make_policy(seed=0)
    new_policy = copy.deepcopy(old_policy)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in new_policy.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    batch = make_batch(old_policy, n_groups=4, group_size=3)
    masks = draw_masks(len(batch), 8, batch.response_length, g)
    args = (batch.input_ids, batch.attention_mask, masks, batch.response_length)
    with torch.no_grad():
        ell_old = elbo_terms(old_policy, *args)
        ell = elbo_terms(new_policy, *args)
    adv = group_advantages(batch.rewards, batch.group_ids)
    assert (adv > 0).any() and (adv < 0).any()
    assert ((ell - ell_old).abs() > 1e-3).all()  # really off-policy
    bound = bgpo_bound(ell, ell_old, adv).mean(dim=1)
    exact = elbo_ratio_objective(ell, ell_old, adv)
    assert (bound <= exact + 1e-12).all()
    assert (bound < exact - 1e-6)[adv != 0].all()  # strictly below where it matters


def test_objectives_equal_on_policy():
    ell = torch.randn(5, 4, dtype=torch.float64)
    adv = torch.randn(5, dtype=torch.float64)
    assert torch.allclose(bgpo_bound(ell, ell, adv).mean(1), elbo_ratio_objective(ell, ell, adv))


def test_clipping_inert_on_policy_and_active_off_policy():
    ell = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5, -0.5], dtype=torch.float64)
    old = ell.detach().clone()
    plain = torch.autograd.grad(bgpo_bound(ell, old, adv).sum(), ell)[0]
    clipped_value, clipped = clipped_bgpo_bound(ell, old, adv, 0.2, 3.0)
    grad = torch.autograd.grad(clipped_value.sum(), ell)[0]
    assert not clipped.any() and torch.allclose(grad, plain, rtol=0, atol=1e-12)
    far = old + torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64).unsqueeze(1)
    value, clipped = clipped_bgpo_bound(far, old, adv, 0.2, 3.0)
    assert clipped[0].all() and clipped[1].all() and not clipped[2:].any()
    assert value[0, 0].item() == pytest.approx(1.2)  # A>0, ratio 2 clipped to 1.2
    assert value[1, 0].item() == pytest.approx(-3.0)  # A<0, ratio e^2 > 3: dual clip


def test_diffu_grpo_objective_clip_and_kl():
    logp = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    old = torch.log(torch.tensor([[0.25, 0.5]], dtype=torch.float64))
    adv = torch.tensor([1.0], dtype=torch.float64)
    value, clipped = diffu_grpo_objective(logp, old, None, adv, clip_eps=0.5, beta=0.0)
    assert value.tolist() == [[1.5, 1.0]] and clipped.tolist() == [[True, False]]
    value_kl, _ = diffu_grpo_objective(logp, old, old, adv, clip_eps=0.5, beta=0.04)
    delta = old - logp
    assert torch.allclose(value_kl, value - 0.04 * (delta.exp() - delta - 1))


def test_registry_declares_what_each_objective_needs():
    bgpo, ratio, d1 = (get_objective(n) for n in ("bgpo", "elbo_ratio", "diffu_grpo"))
    assert bgpo.accumulation == "per_sample" and ratio.accumulation == "retained"
    assert bgpo.behaviour_terms and ratio.behaviour_terms and not d1.behaviour_terms
    assert bgpo.scale_advantages and not d1.scale_advantages  # d1: mean-only advantages
    assert d1.reference_policy and not bgpo.reference_policy
    with pytest.raises(KeyError, match="registered"):
        get_objective("ppo")


def test_group_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.7, 2.0, 4.0, 6.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    adv = group_advantages(rewards, groups)
    s = torch.tensor([1.0, 0.0]).std()  # unbiased
    assert adv[0].item() == pytest.approx(0.5 / (s.item() + 1e-6))
    assert adv[1].item() == pytest.approx(-0.5 / (s.item() + 1e-6))
    assert adv[2:5].tolist() == [0.0, 0.0, 0.0]  # zero std, and a group of one
    assert adv[5:].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-5)  # std 2
    nan = group_advantages(torch.tensor([float("nan"), 1.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert nan[:2].isnan().all() and nan[2:].tolist() == [0.0, 0.0]
    # d1's diffu-GRPO: r - mean(r), no division by the std.
    mean_only = group_advantages(rewards, groups, scale=False)
    assert mean_only.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, -2.0, 0.0, 2.0])
