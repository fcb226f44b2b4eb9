"""The diffusion LM layer shared by rollout and learner: models, tokenizer, dtype/device."""

from dllm.policy import IMPLEMENTATIONS, KINDS, Policy, PolicyOutput, load_policy
from dllm.precision import resolve_device, resolve_dtype
from dllm.tiny import build_tiny_policy
from dllm.tokenizer import build_char_tokenizer

__all__ = [
    "IMPLEMENTATIONS",
    "KINDS",
    "Policy",
    "PolicyOutput",
    "build_char_tokenizer",
    "build_tiny_policy",
    "load_policy",
    "resolve_device",
    "resolve_dtype",
]
