"""The learner's configuration: one pydantic schema, the single source of its defaults.

`LearnerConfig` is what `LearnerWorker` reads; the run configuration (cluster/config.py) composes
it with the learner pool's resources, so `learner.n_t` in a YAML file is this field and nothing
else. Every field has a docstring (shown by `bgpo train --print-config`'s schema); unknown keys
fail with the key's name. This module describes and validates; it computes nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A config section: unknown keys fail, field docstrings become descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class DiffuGRPOConfig(Section):
    clip_eps: float = Field(0.5, gt=0, lt=1)
    """Token-level ratio clip (d1's epsilon; bgpo.md section 8)."""
    beta: float = Field(0.04, ge=0)
    """KL(pi || pi_ref) weight, k3 estimator; 0 needs no reference policy."""
    iterations: int = Field(12, ge=1)
    """Inner optimizer steps per rollout batch (d1's num_iterations, mu)."""
    prompt_mask_prob: float = Field(0.15, ge=0, le=1)
    """Each real prompt token is masked with this probability in every log-prob estimate."""


class GRPOConfig(Section):
    clip_eps: float = Field(0.2, ge=0, lt=1)
    """Token-level ratio clip (DeepSeekMath's epsilon); inert on-policy, where every ratio is 1."""
    clip_eps_high: float | None = Field(None, ge=0)
    """Upper clip (DAPO's clip-higher); None: clip_eps (symmetric)."""
    beta: float = Field(0.0, ge=0)
    """KL(pi || pi_ref) weight, k3 estimator, to the policy RL starts from; 0 keeps no reference."""
    temperature: float | None = Field(None, ge=0)
    """Temperature the log-probs are taken at: the rollouts' sampling temperature. None: a run
    takes rollout.sampling.temperature (cluster/config.py); a LearnerWorker built directly, 1.0."""


class LearnerConfig(Section):
    objective: Literal["bgpo", "elbo_ratio", "diffu_grpo", "grpo"] = "bgpo"
    """Policy objective (bgpo.md sections 4 and 8); see learner/objectives.py for what each needs."""
    n_t: int = Field(8, ge=1)
    """Monte Carlo samples (masked copies) per response for the ELBO (bgpo.md section 2)."""
    micro_batch_size: int = Field(32, ge=1)
    """Responses per forward/backward."""
    mc_chunk: int = Field(1, ge=1)
    """MC samples per forward (a forward holds micro_batch_size * mc_chunk rows; faster, more memory)."""
    lr: float = Field(5e-5, gt=0)
    """AdamW learning rate, constant (the paper uses 5e-7 on LLaDA-8B)."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Global gradient-norm clip; None computes the norm without clipping."""
    clip_eps: float | Literal["auto"] | None = "auto"
    """PPO-style ratio clipping of the bound for stale samples. auto: DARE's 0.2 when
    trainer.max_staleness > 0, off on-policy (where it is inert anyway); None: off."""
    dual_clip: float | None = Field(3.0, gt=1)
    """Dual clip for A < 0 (DARE's 3.0), used only when clipping is on; None: off."""
    bucket_bytes: int = Field(25 * 2**20, ge=1)
    """Gradient all-reduce bucket size across learner ranks."""
    sharding: Literal["replicate", "fsdp"] = "replicate"
    """replicate: every rank holds the whole model and optimizer (gradients all-reduced).
    fsdp: FSDP2 shards weights, gradients and optimizer state over the ranks, for models that do
    not fit one device (LLaDA-8B full fine-tuning)."""
    compute_dtype: Literal["bf16"] | None = None
    """fsdp only: forward and backward run in this dtype while the learner keeps fp32 weights,
    gradients and AdamW state (FSDP2 mixed precision). Use it with a bf16 model: bf16 weights
    cannot take updates as small as lr 5e-7. Rollout workers still get model.dtype weights.
    None: the learner trains in model.dtype. (No fp16: it would need loss scaling, not built.)"""
    diffu_grpo: DiffuGRPOConfig = DiffuGRPOConfig()
    """Settings of the diffu_grpo baseline objective (ignored by bgpo and elbo_ratio)."""
    grpo: GRPOConfig = GRPOConfig()
    """Settings of the grpo objective, the autoregressive baseline (causal policies only)."""

    @model_validator(mode="after")
    def _check(self) -> LearnerConfig:
        if self.compute_dtype is not None and self.sharding != "fsdp":
            raise ValueError("learner.compute_dtype (fp32 master weights) needs learner.sharding=fsdp")
        if isinstance(self.clip_eps, float) and not 0 < self.clip_eps < 1:
            raise ValueError(f"learner.clip_eps must be in (0, 1), 'auto' or null, got {self.clip_eps}")
        return self

    def kl_beta(self) -> float:
        """The KL-to-reference weight of the objective in force (0 for objectives without one)."""
        if self.objective == "grpo":
            return self.grpo.beta
        if self.objective == "diffu_grpo":
            return self.diffu_grpo.beta
        return 0.0

    def ratio_clip(self, max_staleness: int = 0) -> float | None:
        """The clip epsilon in force: `auto` is DARE's 0.2 for stale rollouts, off on-policy. A
        run's resolved config has no `auto` left (cluster/config.py resolves it with the run's
        max_staleness); a LearnerWorker built directly with `auto` is on-policy."""
        if self.clip_eps == "auto":
            return DARE_CLIP_EPS if max_staleness > 0 else None
        return self.clip_eps


DARE_CLIP_EPS = 0.2  # DARE's default PPO clip for BGPO (its dual clip is dual_clip's 3.0)
