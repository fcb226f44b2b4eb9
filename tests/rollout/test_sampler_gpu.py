"""The sampler and worker on CUDA (skipped without a GPU): same tokens as on CPU, CUDA generators."""

import pytest
import torch

from dllm import build_tiny_policy
from rollout import RolloutWorker, SamplingConfig, generate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_matches_cpu_at_temperature_zero():
    policy = build_tiny_policy(seed=0)
    x = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    opts = dict(gen_length=64, steps=64, block_length=16, mask_id=policy.mask_id)
    cpu = generate(policy, x, **opts)
    cuda = generate(policy.to("cuda"), x.to("cuda"), **opts)
    assert (cuda.cpu() == cpu).double().mean().item() > 0.95  # kernels differ in the last bits


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_worker_on_cuda_with_per_row_generators(cache):
    policy = build_tiny_policy(seed=0).to("cuda")
    sampling = SamplingConfig(
        gen_length=32, steps=32, block_length=16, temperature=1.0, cache=cache
    )
    worker = RolloutWorker("rollout-0", policy, sampling, micro_batch_size=4)
    a = worker.generate([[10, 11, 12], [13, 14, 15, 16, 17]], 3, seed=1)
    b = worker.generate([[10, 11, 12], [13, 14, 15, 16, 17]], 3, seed=1)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert all(len(r.response_ids) == 32 and r.nfe == 32 for r in a)
