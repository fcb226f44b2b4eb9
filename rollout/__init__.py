"""Rollout: LLaDA's masked-diffusion sampler (pure torch) and the `RolloutWorker` around it.

Names are imported on first use, so `rollout.types` (the `Rollout` contract) can be used by
processes that never load torch (benchmarks/fleet.py's light actors)."""

import importlib

_EXPORTS = {
    "GenerationStats": "rollout.types",
    "Rollout": "rollout.types",
    "RolloutWorker": "rollout.worker",
    "SamplingConfig": "rollout.config",
    "generate": "rollout.sampler",
    "generate_with_stats": "rollout.sampler",
    "transfer_schedule": "rollout.sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
