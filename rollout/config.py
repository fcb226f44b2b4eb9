"""`SamplingConfig`: every knob of the masked-diffusion sampler, validated in one place.

The defaults are LLaDA's reference sampler (bgpo.md section 7): low-confidence remasking, no
cache, no threshold, temperature 0. Each Fast-dLLM acceleration (KV cache, threshold decoding) is a
switch that is off by default: threshold decoding was reported unstable inside online RL
(bgpo.md section 7, "Caution"), so it is opt-in and every rollout logs its tokens per forward.
A pydantic model (no Ray needed), so the run configuration composes it as it is. This module holds
no sampling code (see `rollout.sampler`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

REMASKING = ("low_confidence", "random")
CACHE_MODES = ("none", "prefix", "dual")


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    gen_length: int = 256
    """Response length L: number of mask tokens appended to the prompt."""
    steps: int = 256
    """Total denoising steps over the whole response (a multiple of the number of blocks)."""
    block_length: int = 32
    """Semi-autoregressive block size; gen_length must be a multiple of it (= gen_length: one block)."""
    temperature: float = 0.0
    """Gumbel-max temperature (LLaDA's float64 form); 0 means plain argmax."""
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    """Which masked tokens to commit each step: most confident first, or random ones."""
    cache: Literal["none", "prefix", "dual"] = "none"
    """Fast-dLLM block-wise approximate KV cache (off by default: it changes the samples)."""
    threshold: float | None = None
    """Fast-dLLM parallel decoding: commit every masked token of the block whose confidence exceeds
    this (at least one per step) instead of following the step schedule. None: off."""
    eval_mode: bool = False
    """Evaluation decoding: a predicted EOS gets confidence 0 so it is committed last (bgpo.md 7.4;
    low-confidence remasking and threshold decoding only: random remasking has no confidences)."""

    @model_validator(mode="after")
    def _valid(self) -> SamplingConfig:
        validate_sampling(
            gen_length=self.gen_length,
            steps=self.steps,
            block_length=self.block_length,
            temperature=self.temperature,
            remasking=self.remasking,
            cache=self.cache,
            threshold=self.threshold,
        )
        return self

    def as_kwargs(self) -> dict:
        """Keyword arguments for `rollout.generate` / `generate_with_stats`."""
        return self.model_dump()


def validate_sampling(
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float,
    remasking: str,
    cache: str,
    threshold: float | None,
) -> None:
    """Raise ValueError naming the offending option (shared by the config and `generate`)."""
    if gen_length <= 0 or block_length <= 0 or steps <= 0:
        raise ValueError(
            f"gen_length ({gen_length}), block_length ({block_length}) and steps ({steps}) must be positive"
        )
    if gen_length % block_length:
        raise ValueError(
            f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(
            f"steps ({steps}) must be a multiple of the number of blocks ({num_blocks})"
        )
    if steps > gen_length:
        # LLaDA's contract: at most one step per token; more would run forwards that commit nothing.
        raise ValueError(f"steps ({steps}) must not exceed gen_length ({gen_length})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}; expected one of {REMASKING}")
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache!r}; expected one of {CACHE_MODES}")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if remasking != "low_confidence":
            raise ValueError(
                "threshold decoding needs model confidences: use remasking='low_confidence'"
            )
