"""Data contracts of the rollout package: what the sampler measures and what a worker returns.

`Rollout` is the unit that flows from a `RolloutWorker` to the verifiers and the learner; it holds
token ids as plain lists (cheap to pickle through Ray, no tensors). Old log-likelihoods are not
here: the learner computes them (ELBO under fixed masks), not the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GenerationStats:
    """Counters of one batched `generate_with_stats` call."""

    nfe: int  # forward passes of the model over the batch (each counts once, whatever B)
    batch_size: int  # B, rows generated together
    gen_length: int  # L, response tokens per row
    full_forwards: int  # forwards over the whole sequence (all of them without a cache)
    seconds: float  # wall-clock time of the call
    cache: str = "none"  # "none" | "prefix" | "dual"
    threshold: float | None = None  # parallel-decoding threshold, None when off

    @property
    def tokens_per_forward(self) -> float:
        """Response tokens committed per row per forward: L / nfe (1.0 when steps == L, no threshold)."""
        return self.gen_length / max(self.nfe, 1)

    @property
    def tokens_per_second(self) -> float:
        """Response tokens of the whole batch per wall-clock second."""
        return self.batch_size * self.gen_length / max(self.seconds, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        """Flat metrics, e.g. for metrics.jsonl under the `rollout/` namespace."""
        return {
            "nfe": self.nfe,
            "batch_size": self.batch_size,
            "gen_length": self.gen_length,
            "full_forwards": self.full_forwards,
            "seconds": self.seconds,
            "tokens_per_forward": self.tokens_per_forward,
            "tokens_per_second": self.tokens_per_second,
            "cache": self.cache,
            "threshold": self.threshold,
        }


@dataclass
class Rollout:
    """One sampled response to one prompt, with the provenance the learner and metrics need."""

    prompt_ids: list[int]  # the prompt's token ids, unpadded, length P_i
    response_ids: list[int]  # exactly gen_length ids; positions left masked at the end hold EOS
    text: str  # the response decoded with special tokens (EOS, pad, mask) stripped
    policy_version: int  # version of the weights that sampled it (RolloutWorker.policy_version)
    group_id: Any  # GRPO group key (one per prompt); samples of one group share it
    sample_index: int  # index of this sample inside its group, 0..G-1
    nfe: int  # forward passes of the batched call that produced it
    tokens_per_forward: float  # gen_length / nfe (logged for every rollout: threshold decoding)
    seconds: float  # wall-clock seconds of the micro-batch that produced it (shared by its rows)
    worker_id: str  # e.g. "rollout-3"
    item_index: int | None = None  # row of the task dataset the prompt came from, when known
    metadata: dict[str, Any] = field(default_factory=dict)  # the task row's fields (answer, ...)
