"""LazyWeights: a saved policy's tensors, read from its safetensors files one at a time."""

import pytest
import torch

from dllm import build_tiny_policy
from dllm.lazy_weights import LazyWeights


def test_lazy_weights_match_the_saved_state(tmp_path):
    policy = build_tiny_policy(hidden_size=32, num_layers=2, num_heads=4, seed=3)
    policy.save_pretrained(tmp_path)
    weights = LazyWeights(tmp_path)
    state = policy.model.state_dict()
    assert set(weights) == set(state) and len(weights) == len(state)
    for name, value in state.items():
        assert torch.equal(weights[name], value), name
    with pytest.raises(KeyError):
        weights["no.such.weight"]


def test_a_folder_without_weights_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        LazyWeights(tmp_path)
