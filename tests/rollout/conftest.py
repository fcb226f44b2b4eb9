"""Shared fixtures of the rollout tests: a small tiny-model policy with varied predictions."""

import pytest
import torch

from dllm import build_tiny_policy


def varied_policy(seed: int = 0):
    """A 2-layer tiny policy re-initialised with larger weights.

    The default initialisation predicts nearly the same token everywhere; larger weights give
    context-dependent, well-separated confidences, so token agreement tests mean something.
    """
    policy = build_tiny_policy(hidden_size=64, num_layers=2, num_heads=4, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    return policy


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine, spinning OpenMP threads made these
    tests 30x slower. Restored after each test, so other packages' tests keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def policy():
    return varied_policy(0)


@pytest.fixture
def prompts():
    """Two prompts of equal length [2, 12] of ordinary character ids."""
    return torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(7))
