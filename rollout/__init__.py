"""Rollout: LLaDA's masked-diffusion sampler (pure torch) and the `RolloutWorker` around it."""

from rollout.config import SamplingConfig
from rollout.sampler import generate, generate_with_stats, transfer_schedule
from rollout.types import GenerationStats, Rollout
from rollout.worker import RolloutWorker

__all__ = [
    "GenerationStats",
    "Rollout",
    "RolloutWorker",
    "SamplingConfig",
    "generate",
    "generate_with_stats",
    "transfer_schedule",
]
