"""Shared fixtures for the learner tests: a float64 tiny policy and a small rollout batch."""

from __future__ import annotations

import pytest
import torch

from dllm import build_tiny_policy
from learner import TrainBatch, build_train_batch

RESPONSE_LENGTH = 8


def make_policy(seed: int = 0, dtype: torch.dtype = torch.float64):
    return build_tiny_policy(hidden_size=32, num_layers=2, num_heads=4, seed=seed, dtype=dtype)


def make_batch(
    policy,
    *,
    n_groups: int = 3,
    group_size: int = 2,
    response_length: int = RESPONSE_LENGTH,
    seed: int = 0,
    rewards: list[float] | None = None,
) -> TrainBatch:
    """Prompts of different lengths (so rows are left-padded), random responses, random rewards."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(policy.tokenizer)
    low = 5  # the char tokenizer's first non-special id
    prompts, responses, group_ids = [], [], []
    for group in range(n_groups):
        prompt_len = 3 + group * 2
        prompt = torch.randint(low, vocab, (prompt_len,), generator=g).tolist()
        for _ in range(group_size):
            prompts.append(prompt)
            responses.append(torch.randint(low, vocab, (response_length,), generator=g).tolist())
            group_ids.append(group)
    n = len(prompts)
    if rewards is None:
        rewards = torch.rand(n, generator=g).tolist()
    return build_train_batch(prompts, responses, rewards, group_ids, pad_id=policy.pad_id)


@pytest.fixture(name="make_policy")
def make_policy_fixture():
    return make_policy


@pytest.fixture(name="make_batch")
def make_batch_fixture():
    return make_batch


@pytest.fixture
def policy():
    return make_policy()


@pytest.fixture
def batch(policy):
    return make_batch(policy)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model is faster on one thread, and tests stay quick on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
