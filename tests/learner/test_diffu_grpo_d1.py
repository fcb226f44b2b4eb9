"""diffu-GRPO as d1 computes it (`diffu-grpo/diffu_grpo_trainer.py` at 837888f): mean-only group
advantages, and a loss averaged over the completion tokens up to and including the first EOS."""

from __future__ import annotations

import pytest
import torch

from learner import LearnerConfig, LearnerWorker, build_train_batch
from learner.diffu_grpo import completion_mask


def test_completion_mask_stops_after_the_first_eos():
    eos = 2
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 6, 2, 7], [5, 6, 7, 8, 9]])
    assert completion_mask(ids, eos).int().tolist() == [
        [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_first_iteration_loss_is_d1s_formula_by_hand(make_policy):
    """At the first inner iteration the ratio is 1 and the reference equals the policy, so d1's
    loss  -sum_{i,t} A_i * m_it / sum_{i,t} m_it  (m: the completion mask) is known by hand."""
    policy = make_policy()
    eos = policy.eos_id
    prompts = [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9]]
    responses = [[10, eos, eos, eos], [10, 11, 12, 13], [eos, eos, eos, eos], [11, 12, eos, 10]]
    rewards = [1.0, 0.0, 0.25, 1.0]
    batch = build_train_batch(prompts, responses, rewards, [0, 0, 1, 1], pad_id=policy.pad_id,
                              scale_advantages=False)
    adv = torch.tensor([0.5, -0.5, -0.375, 0.375], dtype=torch.float64)  # r - group mean
    assert torch.allclose(batch.advantages, adv)
    counted = torch.tensor([2, 4, 1, 3], dtype=torch.float64)  # tokens up to the first EOS
    expected = -float((adv * counted).sum() / counted.sum())
    config = LearnerConfig(objective="diffu_grpo", micro_batch_size=3, lr=1e-3,
                           diffu_grpo={"iterations": 2, "beta": 0.04})
    metrics = LearnerWorker(policy, config).step(batch)
    assert metrics["train/loss_first_iteration"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert metrics["train/tokens"] == batch.response_length * len(batch)
