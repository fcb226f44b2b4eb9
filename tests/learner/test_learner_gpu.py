"""GPU checks of the learner (skipped without CUDA): equivalence on CUDA and flat BGPO memory."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from learner import LearnerConfig, LearnerWorker, draw_masks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bgpo_equals_elbo_ratio_on_cuda(make_policy, make_batch):
    batch = make_batch(make_policy(), n_groups=3, group_size=3)
    batch = replace(batch, masks=draw_masks(len(batch), 4, batch.response_length))
    grads = {}
    for objective in ("bgpo", "elbo_ratio"):
        policy = make_policy().cuda()
        config = LearnerConfig(objective=objective, n_t=4, micro_batch_size=4, lr=1e-3)
        LearnerWorker(policy, config).accumulate_gradients(batch)
        grads[objective] = [p.grad for p in policy.parameters()]
    for a, b in zip(grads["bgpo"], grads["elbo_ratio"], strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def _peak(objective: str, n_t: int, make_policy, make_batch) -> int:
    policy = make_policy(dtype=torch.float32).cuda()
    batch = make_batch(policy, n_groups=4, group_size=4, response_length=64)
    worker = LearnerWorker(policy, LearnerConfig(objective=objective, n_t=n_t, micro_batch_size=16))
    worker.step(replace(batch, masks=draw_masks(len(batch), 1, 64)))  # optimizer state exists
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    worker.step(replace(batch, masks=draw_masks(len(batch), n_t, 64)))
    return torch.cuda.max_memory_allocated() - base


def test_bgpo_peak_memory_flat_in_n_t(make_policy, make_batch):
    bgpo_2, bgpo_16 = (_peak("bgpo", n, make_policy, make_batch) for n in (2, 16))
    ratio_2, ratio_16 = (_peak("elbo_ratio", n, make_policy, make_batch) for n in (2, 16))
    assert bgpo_16 <= 1.02 * bgpo_2
    assert ratio_16 >= 4 * ratio_2
