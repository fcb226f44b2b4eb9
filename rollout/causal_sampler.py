"""`engine: hf` for causal policies: token-by-token sampling with transformers, plus the data
contracts the vLLM engine (rollout/vllm_engine.py, rollout/vllm_client.py) shares.

`CausalSampler` has the interface of `RolloutWorker` (generate G samples per prompt, versioned
weight loads, all-or-nothing) and returns `CausalRollout`s, which add the sampled tokens'
log-probs. Sampling: temperature 0 is argmax; otherwise one draw from softmax(logits / T), and the
recorded log-prob is that distribution's (what vLLM's `processed_logprobs` mode returns and what
`dllm.causal.response_logprobs(..., temperature=T)` recomputes). Each sample draws from its own
generator, seeded from (call seed, group id, sample index) like `RolloutWorker`, so a sample does
not depend on the batch it landed in. A sequence stops at its first EOS; the response is padded to
L = `gen_length` with EOS (the TrainBatch layout) and its log-probs with 0.
A KV cache (transformers' `DynamicCache`) makes each step one forward over the new token.
This module does not score, train or talk to other processes.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dllm.causal import CausalPolicy
from dllm.padding import left_pad
from dllm.weights import WeightBucket, load_buckets_into
from rollout.types import Rollout
from rollout.worker import call_seed as rollout_call_seed
from rollout.worker import check_generate_args, check_state_dict, sample_seed


@dataclass(frozen=True)
class CausalSamplingConfig:
    gen_length: int = 256
    """Response length L: at most this many new tokens; shorter responses are padded with EOS."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax)."""

    @classmethod
    def from_sampling(cls, sampling) -> CausalSamplingConfig:
        """The causal settings of a run's `rollout.sampling` (a rollout.SamplingConfig): its
        gen_length and temperature; the diffusion-only keys (steps, blocks, remasking, cache,
        threshold, eval_mode) do not apply to token-by-token sampling."""
        return cls(gen_length=sampling.gen_length, temperature=sampling.temperature)

    def __post_init__(self) -> None:
        if self.gen_length <= 0:
            raise ValueError(f"gen_length must be positive, got {self.gen_length}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class CausalRollout(Rollout):
    """A `Rollout` from a causal policy, with what GRPO needs from the behaviour policy."""

    # [L] log-prob of each response token under the sampling distribution; 0.0 after the completion
    logprobs: list[float] = field(default_factory=list)
    num_tokens: int = 0  # generated tokens, the first EOS included (the completion's length)


def pad_completion(
    tokens: Sequence[int], logprobs: Sequence[float], length: int, eos_id: int
) -> tuple[list[int], list[float]]:
    """A completion cut at its first EOS (kept) and padded to `length` with EOS / 0.0 log-probs."""
    tokens, logprobs = list(tokens), list(logprobs)
    if len(tokens) != len(logprobs):
        raise ValueError(f"{len(tokens)} tokens but {len(logprobs)} log-probs")
    if eos_id in tokens:
        cut = tokens.index(eos_id) + 1
        tokens, logprobs = tokens[:cut], logprobs[:cut]
    if len(tokens) > length:
        raise ValueError(f"completion of {len(tokens)} tokens is longer than gen_length={length}")
    pad = length - len(tokens)
    return tokens + [eos_id] * pad, logprobs + [0.0] * pad


def make_rollout(
    prompt: Sequence[int],
    tokens: Sequence[int],
    logprobs: Sequence[float],
    *,
    gen_length: int,
    eos_id: int,
    tokenizer,
    version: int,
    group_id: Any,
    sample_index: int,
    seconds: float,
    worker_id: str,
    item_index: int | None,
    metadata: dict[str, Any] | None,
) -> CausalRollout:
    """One `CausalRollout` from a raw completion (shared by `engine: hf` and `engine: vllm`)."""
    n_real = len(tokens) if eos_id not in tokens else list(tokens).index(eos_id) + 1
    response, padded_logprobs = pad_completion(tokens, logprobs, gen_length, eos_id)
    text = tokenizer.decode(response, skip_special_tokens=True) if tokenizer is not None else ""
    return CausalRollout(
        prompt_ids=list(prompt),
        response_ids=response,
        text=text,
        policy_version=int(version),
        group_id=group_id,
        sample_index=sample_index,
        nfe=n_real,  # one forward per generated token
        tokens_per_forward=1.0,
        seconds=seconds,
        worker_id=worker_id,
        item_index=item_index,
        metadata=dict(metadata) if metadata is not None else {},
        logprobs=padded_logprobs,
        num_tokens=n_real,
    )


@torch.no_grad()
def sample_causal(
    policy: CausalPolicy,
    prompts: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator],
    *,
    max_tokens: int,
    temperature: float,
) -> tuple[list[list[int]], list[list[float]]]:
    """(tokens, log-probs) per row, each cut after the row's first EOS (at most `max_tokens`)."""
    ids, mask = left_pad(prompts, policy.pad_id)
    device = policy.device
    ids, mask = ids.to(device), mask.to(device)
    from transformers import DynamicCache

    cache = DynamicCache(config=policy.model.config)
    cache_kw = _cache_keyword(policy.model)
    rows = ids.shape[0]
    next_pos = mask.sum(-1, keepdim=True)  # position of the first new token, per row
    step_ids, step_pos = ids, (mask.cumsum(-1) - 1).clamp(min=0)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    for _ in range(max_tokens):
        out = policy.model(
            input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
            **{cache_kw: cache},
        )  # fmt: skip
        logits = out.logits[:, -1].to(torch.float32)
        if temperature > 0:
            logits = logits / temperature
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = _draw(logprobs, generators, greedy=temperature == 0)
        picked = logprobs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
        for row in range(rows):
            if not done[row]:
                tokens[row].append(int(chosen[row]))
                logps[row].append(float(picked[row]))
        done |= chosen == policy.eos_id
        if bool(done.all()):
            break
        # Finished rows keep feeding EOS; their tokens are no longer recorded.
        step_ids = torch.where(done, torch.full_like(chosen, policy.eos_id), chosen).unsqueeze(-1)
        step_pos = next_pos
        next_pos = next_pos + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return tokens, logps


def _cache_keyword(model: torch.nn.Module) -> str:
    """The forward's KV-cache argument: `cache` in newer transformers (5.24), `past_key_values` in 5.19."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(f"{type(model).__name__}.forward takes no KV cache (neither cache nor past_key_values)")


def _draw(logprobs: torch.Tensor, generators: Sequence[torch.Generator], *, greedy: bool) -> torch.Tensor:
    if greedy:
        return logprobs.argmax(dim=-1)
    probs = logprobs.exp()
    return torch.cat(
        [torch.multinomial(probs[row], 1, generator=gen) for row, gen in enumerate(generators)]
    )


class CausalSampler:
    """`engine: hf`: samples groups with a `CausalPolicy`; receives new weights by version."""

    def __init__(
        self,
        worker_id: str,
        policy: CausalPolicy,
        sampling: CausalSamplingConfig,
        *,
        seed: int = 0,
        micro_batch_size: int = 16,
    ) -> None:
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
        self.worker_id = worker_id
        self.policy = policy.eval()
        self.sampling = sampling
        self.seed = int(seed)
        self.micro_batch_size = micro_batch_size
        self._version = 0
        self._calls = 0
        self._lock = threading.Lock()  # generate and load never interleave: one version per call

    def __repr__(self) -> str:
        return f"CausalSampler({self.worker_id}, v={self._version})"

    @property
    def policy_version(self) -> int:
        return self._version

    def load_state_dict(self, version: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace every weight of `policy.model` and set the version; all-or-nothing."""
        with self._lock:
            check_state_dict(self.policy.model, state_dict)
            target = self.policy.model.state_dict()
            with torch.no_grad():
                for name, value in state_dict.items():
                    target[name].copy_(value)
            self._version = int(version)

    def load_weights(
        self, version: int, buckets: list[WeightBucket], flats: list[torch.Tensor | np.ndarray]
    ) -> None:
        """Replace every weight from packed buckets (`dllm.weights`); all-or-nothing."""
        with self._lock:
            load_buckets_into(self.policy.model, buckets, flats)
            self._version = int(version)

    def generate(
        self,
        prompts: list[list[int]],
        group_size: int,
        *,
        group_ids: Sequence[Any] | None = None,
        seed: int | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        item_indices: Sequence[int] | None = None,
        sampling: CausalSamplingConfig | None = None,
    ) -> list[CausalRollout]:
        """`group_size` samples per prompt, prompt-major, as `RolloutWorker.generate`; `sampling`
        overrides the sampler's settings for this call (evaluation decodes greedily)."""
        sampling = sampling or self.sampling
        n = len(prompts)
        check_generate_args(n, group_size, group_ids=group_ids, metadata=metadata, item_indices=item_indices)
        group_ids = list(range(n)) if group_ids is None else list(group_ids)
        jobs = [(i, j) for i in range(n) for j in range(group_size)]
        order = sorted(range(len(jobs)), key=lambda k: len(prompts[jobs[k][0]]))
        rollouts: list[CausalRollout | None] = [None] * len(jobs)
        with self._lock:
            self._calls += 1
            call_seed = rollout_call_seed(seed, self.seed, self.worker_id, self._calls)
            for first in range(0, len(order), self.micro_batch_size):
                picked = order[first : first + self.micro_batch_size]
                chunk = [jobs[k] for k in picked]
                start = time.perf_counter()
                generators = [
                    torch.Generator(device=self.policy.device).manual_seed(
                        sample_seed(call_seed, group_ids[i], j)
                    )
                    for i, j in chunk
                ]
                tokens, logps = sample_causal(
                    self.policy,
                    [prompts[i] for i, _ in chunk],
                    generators,
                    max_tokens=sampling.gen_length,
                    temperature=sampling.temperature,
                )
                seconds = time.perf_counter() - start
                for row, (k, (i, j)) in enumerate(zip(picked, chunk, strict=True)):
                    rollouts[k] = make_rollout(
                        prompts[i], tokens[row], logps[row],
                        gen_length=sampling.gen_length, eos_id=self.policy.eos_id,
                        tokenizer=self.policy.tokenizer, version=self._version,
                        group_id=group_ids[i], sample_index=j, seconds=seconds,
                        worker_id=self.worker_id,
                        item_index=None if item_indices is None else int(item_indices[i]),
                        metadata=None if metadata is None else metadata[i],
                    )  # fmt: skip
        return rollouts
