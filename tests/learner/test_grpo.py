"""GRPO for causal policies against a by-hand computation, and its masking and gradient."""

import math

import pytest
import torch

from learner.advantages import group_advantages
from learner.grpo import completion_mask, grpo_objective

EOS = 2


def test_completion_mask_keeps_the_first_eos():
    ids = torch.tensor([[7, 2, 2, 2], [7, 8, 9, 5], [2, 8, 2, 9]])
    assert completion_mask(ids, EOS).tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
    ]


def by_hand(logp, old, ref, adv, mask, eps_low, eps_high, beta):
    """The module docstring's formula in plain Python floats, one token at a time."""
    out = []
    for i in range(len(logp)):
        total, count = 0.0, 0
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            r = math.exp(logp[i][t] - old[i][t])
            s = min(r * adv[i], min(max(r, 1 - eps_low), 1 + eps_high) * adv[i])
            d = ref[i][t] - logp[i][t]
            total += s - beta * (math.exp(d) - d - 1)
            count += 1
        out.append(total / count)
    return out


def test_matches_the_by_hand_computation():
    logp = [[-1.0, -0.5, -2.0], [-0.2, -3.0, -1.5], [-1.1, -0.9, -0.4]]
    old = [[-1.3, -0.5, -1.0], [-0.4, -2.0, 0.0], [-1.0, -1.2, -0.4]]  # ratios above and below 1 +- eps
    ref = [[-1.1, -0.7, -1.9], [-0.3, -2.5, -1.0], [-1.0, -1.0, -0.5]]
    adv = [1.5, -0.8, 0.6]
    response_ids = torch.tensor([[5, 6, 7], [5, EOS, EOS], [EOS, 9, 9]])
    mask = completion_mask(response_ids, EOS)
    terms = grpo_objective(
        torch.tensor(logp, dtype=torch.float64),
        torch.tensor(old, dtype=torch.float64),
        torch.tensor(adv),
        mask,
        clip_eps=0.2,
        clip_eps_high=0.28,
        ref_logp=torch.tensor(ref, dtype=torch.float64),
        beta=0.05,
    )
    expected = by_hand(logp, old, ref, adv, mask.tolist(), 0.2, 0.28, 0.05)
    torch.testing.assert_close(terms.objective, torch.tensor(expected, dtype=torch.float64))
    # Row 0, token 0: ratio e^0.3 > 1.28 with A > 0 is clipped; row 1, token 1: e^-1 < 0.8 with
    # A < 0 is clipped too; ratios inside [0.8, 1.28] and A > 0 with a ratio below 0.8 are not.
    assert terms.clipped.tolist() == [[True, False, False], [False, True, False], [False, False, False]]
    assert (terms.per_token[~mask] == 0).all()
    assert terms.kl is not None and (terms.kl >= 0).all()


def test_on_policy_gradient_is_the_policy_gradient():
    """With logp == old_logp (ratio 1, nothing clipped) and no KL, dJ_i/dlogp_it = A_i / |o_i|."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.6, -0.9]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([2.0, -1.0])
    terms = grpo_objective(logp, logp.detach().clone(), adv, mask)
    terms.objective.sum().backward()
    expected = torch.tensor([[1.0, 1.0, 0.0], [-1 / 3, -1 / 3, -1 / 3]])
    torch.testing.assert_close(logp.grad, expected)
    assert not terms.clipped.any()


def test_padding_cannot_overflow_into_the_gradient():
    # The sampler pads old_logp with 0 and the learner's logp there can be anything.
    logp = torch.tensor([[-1.0, 500.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -500.0]])
    terms = grpo_objective(logp, old, torch.tensor([1.0]), torch.tensor([[True, False]]),
                           ref_logp=torch.tensor([[-1.0, 900.0]]), beta=0.1)  # fmt: skip
    terms.objective.sum().backward()
    assert torch.isfinite(terms.objective).all() and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1] == 0


def test_takes_advantages_from_the_shared_code():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv = group_advantages(rewards, torch.tensor([0, 0, 1, 1]))
    logp = torch.full((4, 2), -1.0)
    terms = grpo_objective(logp, logp.clone(), adv, torch.ones(4, 2, dtype=torch.bool))
    # On-policy, J_i = A_i: an equal-reward group (1) contributes nothing.
    torch.testing.assert_close(terms.objective, adv.float())
    assert terms.objective[2:].abs().max() == 0


def test_rejects_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_objective(x, x, torch.zeros(2), x.bool(), beta=0.1)
    with pytest.raises(ValueError, match=r"advantages \(3,\)"):
        grpo_objective(x, x, torch.zeros(3), x.bool())
    with pytest.raises(ValueError, match="must all be"):
        grpo_objective(x, torch.zeros(2, 4), torch.zeros(2), x.bool())


def test_a_few_grpo_steps_raise_a_toy_reward():
    """Sampler -> group advantages -> GRPO -> Adam on the tiny causal model: the reward (share of
    response tokens equal to one target token) goes up within a few on-policy steps."""
    from dllm.causal import build_tiny_causal_policy, pack_prompt_response, response_logprobs
    from rollout.causal_sampler import CausalSampler, CausalSamplingConfig

    torch.manual_seed(0)
    policy = build_tiny_causal_policy(hidden_size=32, num_layers=1, num_heads=2, seed=0)
    target, length = 40, 6
    sampler = CausalSampler("hf", policy, CausalSamplingConfig(gen_length=length, temperature=1.0))
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-2)
    prompts = [[10 + i, 20 + i] for i in range(4)]
    means = []
    for step in range(12):
        rollouts = sampler.generate(prompts, 8, seed=step)
        rewards = torch.tensor([sum(t == target for t in r.response_ids[: r.num_tokens]) / length
                                for r in rollouts])  # fmt: skip
        means.append(float(rewards.mean()))
        adv = group_advantages(rewards, torch.tensor([r.group_id for r in rollouts]))
        ids, mask = pack_prompt_response([r.prompt_ids for r in rollouts],
                                         [r.response_ids for r in rollouts], pad_id=policy.pad_id)  # fmt: skip
        logp = response_logprobs(policy.train(), ids, mask, length, temperature=1.0)
        old = torch.tensor([r.logprobs for r in rollouts])
        done = completion_mask(ids[:, -length:], policy.eos_id)
        terms = grpo_objective(logp, old, adv, done, clip_eps=0.2)
        optimizer.zero_grad()
        (-terms.objective.mean()).backward()
        optimizer.step()
        policy.eval()
        if step == 0:  # on-policy: the learner's log-probs are the sampler's
            torch.testing.assert_close(logp[done].detach(), old[done], rtol=0, atol=1e-5)
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.2, means
