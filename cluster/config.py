"""The run configuration: one pydantic schema, YAML files in configs/, dotted overrides.

Every field has a docstring; unknown keys fail with the key's name (`extra="forbid"`). A run
writes the resolved config to `<output_dir>/<run_name>/config.resolved.yaml`. This module only
describes and validates; it starts nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class TinyModelConfig(Section):
    hidden_size: int = 128
    """Width of the tiny bidirectional Llama."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (also key/value heads)."""


class ModelConfig(Section):
    name_or_path: str = "tiny"
    """"tiny" builds the built-in model; otherwise a checkpoint folder or hub name (LLaDA, Dream)."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the built-in model when name_or_path is "tiny"."""
    dtype: str = "auto"
    """fp32, bf16 or auto (bf16 on CUDA, fp32 on CPU)."""
    trust_remote_code: bool = True
    """LLaDA and Dream ship their model code with the checkpoint."""


class TaskConfig(Section):
    name: Literal["sudoku", "countdown", "gsm8k", "math", "humaneval", "mbpp"] = "sudoku"
    """Which task of the rewards package scores the completions."""
    train_path: str | list[str] | None = None
    """Parquet/jsonl rows (d1/BGPO layout), several files, or a hub dataset name; None generates
    sudoku/countdown rows with certified solutions."""
    test_path: str | None = None
    """Held-out rows for evaluation; None generates them (from grids unseen in training)."""
    num_train: int = 2000
    """Rows to generate when train_path is None."""
    num_test: int = 200
    """Rows to generate when test_path is None."""
    prompt_style: Literal["compact", "chat"] = "compact"
    """compact: the bare puzzle for the tiny model; chat: the row's chat prompt via the tokenizer's template."""
    preset: str = "compact"
    """Reward preset: bgpo (paper), d1, or compact (completion is the answer; tiny model)."""


class SamplingSection(Section):
    gen_length: int = 16
    """Response length L in tokens (LLaDA pads the tail with EOS)."""
    steps: int = 16
    """Diffusion steps for the whole response."""
    block_length: int = 16
    """Semi-autoregressive block size; gen_length must be a multiple of it."""
    temperature: float = 1.0
    """Gumbel-max temperature for training rollouts (0 = greedy)."""
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    """Which masked positions are committed at each step."""
    cache: Literal["none", "prefix", "dual"] = "none"
    """Fast-dLLM approximate KV cache (off by default: it changes the samples)."""
    threshold: float | None = None
    """Confidence-threshold parallel decoding; None is off (reported unstable inside online RL)."""
    eval_mode: bool = False
    """Evaluation decoding: a predicted EOS gets confidence 0, so it is committed last (bgpo.md 7.4)."""

    @model_validator(mode="after")
    def _blocks_divide(self) -> SamplingSection:
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length {self.gen_length} is not a multiple of block_length {self.block_length}")
        blocks = self.gen_length // self.block_length
        if self.steps > self.gen_length:
            raise ValueError(f"steps {self.steps} exceed gen_length {self.gen_length} (at most one token per step)")
        if self.steps % blocks:
            raise ValueError(f"steps {self.steps} is not a multiple of the number of blocks {blocks}")
        return self


class RolloutConfig(Section):
    num_workers: int = Field(2, ge=1)
    """Rollout actors; scaled independently of the learner."""
    num_cpus: float = 0.5
    """CPUs reserved per rollout actor."""
    num_gpus: float = 0.0
    """GPUs reserved per rollout actor."""
    num_threads: int | None = None
    """torch intra-op threads per rollout actor (default: num_cpus, at least 1)."""
    group_size: int = Field(8, ge=1)
    """G: samples per prompt (one GRPO group)."""
    micro_batch_size: int = 64
    """Sequences per sampler forward on a worker."""
    sampling: SamplingSection = SamplingSection()
    """Sampler settings for training rollouts."""
    eval_sampling: SamplingSection = SamplingSection(temperature=0.0, eval_mode=True)
    """Sampler settings for held-out evaluation (greedy, EOS confidence 0: the paper's setting)."""


class RewardsConfig(Section):
    num_workers: int = Field(1, ge=1)
    """Verifier actors."""
    num_cpus: float = 0.25
    """CPUs reserved per verifier actor."""
    max_concurrency: int = 2
    """Completions scored at once inside one verifier."""
    deadline_s: float = 10.0
    """Wall-clock limit to score one completion."""
    allow_unsandboxed: bool = False
    """Run code without the sandbox when none works (explicit opt-in)."""


class DiffuGRPOSection(Section):
    clip_eps: float = 0.5
    """Token-level ratio clip (d1; bgpo.md section 8)."""
    beta: float = Field(0.04, ge=0)
    """KL(pi || pi_ref) weight, k3 estimator; 0 needs no reference policy."""
    iterations: int = Field(12, ge=1)
    """Inner optimizer steps per rollout batch (d1's mu)."""
    prompt_mask_prob: float = Field(0.15, ge=0, le=1)
    """Each real prompt token is masked with this probability in every log-prob estimate."""


class LearnerConfig(Section):
    num_workers: int = Field(1, ge=1)
    """Learner ranks in one torch.distributed group (gloo on CPU, NCCL on GPU)."""
    num_cpus: float = 1.0
    """CPUs reserved per learner rank."""
    num_gpus: float = 0.0
    """GPUs reserved per learner rank."""
    sharding: Literal["replicate", "fsdp"] = "replicate"
    """replicate: every rank holds the whole model and optimizer (gradients all-reduced).
    fsdp: FSDP2 shards weights, gradients and optimizer state over the ranks, for models that do
    not fit one device (LLaDA-8B full fine-tuning)."""
    compute_dtype: Literal["bf16"] | None = None
    """fsdp only: forward and backward run in this dtype while the learner keeps fp32 weights,
    gradients and AdamW state (FSDP2 mixed precision). Use it with a bf16 model: bf16 weights
    cannot take updates as small as lr 5e-7. Rollout workers still get model.dtype weights.
    None: the learner trains in model.dtype. (No fp16: it would need loss scaling, not built.)"""
    num_threads: int | None = 2
    """torch intra-op threads per learner rank (None: num_cpus). In synchronous mode the rollout
    actors are idle while the learner trains, so on a small CPU node it may use every core."""
    objective: Literal["bgpo", "elbo_ratio", "diffu_grpo"] = "bgpo"
    """Policy objective (bgpo.md sections 4 and 8)."""
    n_t: int = Field(8, ge=1)
    """Monte Carlo samples per response for the ELBO."""
    micro_batch_size: int = 32
    """Sequences per forward/backward."""
    mc_chunk: int = 1
    """MC samples per forward (more is faster and uses more memory)."""
    lr: float = 5e-5
    """AdamW learning rate (the paper uses 5e-7 on LLaDA-8B)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    clip_eps: float | None = None
    """PPO-style ratio clipping for stale samples (None: off, inert on-policy anyway)."""
    dual_clip: float | None = 3.0
    """Dual clip for A < 0, used only when clip_eps is set (None: off)."""
    bucket_bytes: int = Field(25 * 2**20, ge=1)
    """Gradient all-reduce bucket size across learner ranks."""
    diffu_grpo: DiffuGRPOSection = DiffuGRPOSection()
    """Settings of the diffu_grpo baseline objective (ignored by bgpo and elbo_ratio)."""

    @model_validator(mode="after")
    def _mixed_precision_needs_fsdp(self) -> LearnerConfig:
        if self.compute_dtype is not None and self.sharding != "fsdp":
            raise ValueError("learner.compute_dtype (fp32 master weights) needs learner.sharding=fsdp")
        return self


class WarmupConfig(Section):
    steps: int = Field(300, ge=0)
    """Supervised warm-start steps of the tiny model before RL (0 skips it); a step count, not a
    time budget, so a run is reproducible from its seed."""
    max_seconds: float | None = None
    """Optional wall-clock cap on the warm start (makes the run machine-dependent)."""
    lr: float = 1e-3
    """AdamW learning rate of the warm start."""
    batch_size: int = 64
    """Sequences per warm-start step."""


class TrainerConfig(Section):
    total_steps: int = Field(80, ge=0)
    """RL steps (one optimizer step per rollout batch)."""
    prompts_per_step: int = Field(16, ge=1)
    """B: prompts per step; the batch is B x G responses."""
    max_staleness: int = Field(0, ge=0)
    """0: synchronous on-policy; k >= 1: rollouts may be k policy versions behind (overlap)."""
    eval_every: int = 0
    """Evaluate held-out accuracy every N steps (0: only before and after)."""
    eval_limit: int = 200
    """Held-out rows per evaluation."""
    rollout_timeout_s: float = 600.0
    """Deadline for one rollout request; late work is re-dispatched once, then dropped."""


class CheckpointConfig(Section):
    every: int = 0
    """Save every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""


class TrackingConfig(Section):
    tensorboard: bool = False
    """Write TensorBoard events (extra 'tracking')."""
    wandb: bool = False
    """Log to Weights & Biases (extra 'tracking'; offline unless configured)."""


class WeightSyncConfig(Section):
    backend: Literal["collective", "object_store"] = "collective"
    """collective: bucketed torch.distributed broadcast; object_store: numpy buckets via Ray."""
    bucket_mb: int = 256
    """Bucket size for the broadcast."""


class RunConfig(Section):
    run_name: str = "tiny-sudoku"
    """Folder name under output_dir."""
    output_dir: str = "runs"
    """Where run folders go."""
    seed: int = 0
    """Seeds data order, model init, masks and sampling."""
    device: str = "cpu"
    """cpu, cuda or auto, for every actor."""
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    warmup: WarmupConfig = WarmupConfig()
    rollout: RolloutConfig = RolloutConfig()
    rewards: RewardsConfig = RewardsConfig()
    learner: LearnerConfig = LearnerConfig()
    trainer: TrainerConfig = TrainerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    weight_sync: WeightSyncConfig = WeightSyncConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    """`learner.lr=1e-6` -> ("learner.lr", 1e-6); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" (no dot) as a string; users mean the number
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.strip(), value


def resolve_config_path(name_or_path: str) -> Path:
    """A file path, or the name of a preset in configs/ (with or without .yaml)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    preset = CONFIG_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if preset.exists():
        return preset
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a preset; presets: {known}")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then dotted overrides; errors name the offending key."""
    tree: dict = {}
    if path:
        loaded = yaml.safe_load(resolve_config_path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config {path} must be a mapping at the top level")
        tree = loaded
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"invalid config: {problems}") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
