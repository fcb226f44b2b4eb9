"""`RolloutWorker`: G samples per prompt from the current policy version, and versioned weight loads.

A plain class (the cluster wraps it with `ray.remote` where it is wired), so tests need no Ray.
Generation and weight loading share one lock: a call to `generate` samples every rollout with one
policy version, and a load never lands halfway through a forward. A load validates the whole update
(names, shapes, dtypes) before it copies a single tensor, so a bad update leaves the old weights and
version in place. Weight names are those of the HF model inside the policy (`policy.model`, the
names `save_pretrained` writes), whether sent as a state dict or as buckets (`dllm.weights`).

Seeding: each sample draws its noise from its own generator, seeded from (call seed, group id,
sample index), so a rollout does not depend on the micro-batch it landed in or the padding there.
This module does not score, batch across workers or talk to the learner.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dllm.padding import left_pad
from dllm.weights import FlatWeights, WeightBucket, load_buckets_into
from rollout.config import SamplingConfig
from rollout.sampler import generate_with_stats
from rollout.types import Rollout

log = logging.getLogger(__name__)


def sample_seed(call_seed: int, group_id: Any, sample_index: int) -> int:
    """A stable 63-bit seed for one sample (Python's hash() is salted per process; sha256 is not)."""
    digest = hashlib.sha256(f"{call_seed}|{group_id!r}|{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def check_generate_args(n: int, group_size: int, **seqs: Sequence | None) -> None:
    """Raise ValueError naming the argument whose length does not match the n prompts (shared by
    every sampler: RolloutWorker, the causal samplers)."""
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    for name, seq in seqs.items():
        if seq is not None and len(seq) != n:
            raise ValueError(f"{len(seq)} {name} for {n} prompts")


def call_seed(seed: int | None, worker_seed: int, worker_id: str, calls: int) -> int:
    """A call's seed: the given one, or a fresh one per call derived from the worker's seed."""
    return int(seed) if seed is not None else sample_seed(worker_seed, worker_id, calls)


def check_state_dict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Fail, naming the tensor, unless `state_dict` covers the module's state exactly."""
    target = module.state_dict()
    unknown = sorted(set(state_dict) - set(target))
    missing = sorted(set(target) - set(state_dict))
    if unknown:
        raise KeyError(f"weights not in the receiving model: {unknown[:5]} ({len(unknown)} in all)")
    if missing:
        raise KeyError(f"weights missing from the update: {missing[:5]} ({len(missing)} in all)")
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"weight {name!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(target[name].shape):
            raise ValueError(
                f"weight {name!r}: shape {tuple(value.shape)} != model's {tuple(target[name].shape)}"
            )
        if value.dtype != target[name].dtype:
            raise ValueError(
                f"weight {name!r}: dtype {value.dtype} != model's {target[name].dtype}"
            )


class RolloutWorker:
    """Samples groups of responses with a `dllm.Policy`; receives new weights by version."""

    def __init__(
        self,
        worker_id: str,
        policy,
        sampling: SamplingConfig,
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
        self._lock = threading.Lock()  # one lock for generate and load: no half-loaded weights

    def __repr__(self) -> str:
        return f"RolloutWorker({self.worker_id}, v={self._version})"

    @property
    def policy_version(self) -> int:
        """Version of the weights now loaded (0 until the first load)."""
        return self._version

    def load_weights(
        self,
        version: int,
        buckets: list[WeightBucket],
        flats: list[torch.Tensor | np.ndarray],
    ) -> None:
        """Replace every weight from packed buckets (`dllm.weights`); all-or-nothing."""
        with self._lock:
            # load_buckets_into checks names, shapes, dtypes and buffer sizes before any copy.
            load_buckets_into(self.policy.model, buckets, flats)
            self._version = int(version)

    def adopt_flat_weights(self, buckets: list[WeightBucket], spare: bool = True) -> FlatWeights:
        """Lay the model's weights out as `buckets` (values unchanged), so updates can be received
        straight into a spare set and swapped in whole (`commit_weights`)."""
        with self._lock:  # rebinds every parameter's storage: no forward may run meanwhile
            return FlatWeights(self.policy.model, buckets, spare=spare)

    def commit_weights(self, version: int, flat: FlatWeights) -> None:
        """Swap in a fully received update and set its version; generation never sees half of it."""
        with self._lock:
            flat.commit()
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
        sampling: SamplingConfig | None = None,
    ) -> list[Rollout]:
        """`group_size` samples for every prompt, grouped prompt by prompt (prompt-major order).

        `group_ids` default to the prompts' positions; `metadata[i]` / `item_indices[i]` are
        copied into every rollout of prompt i. `sampling` overrides the worker's settings for
        this call (the cluster's evaluation requests decode greedily). `seed=None` draws a fresh seed per call from the
        worker seed, so repeated calls give new samples and a fixed `seed` reproduces a call.
        """
        n = len(prompts)
        check_generate_args(n, group_size, group_ids=group_ids, metadata=metadata, item_indices=item_indices)
        group_ids = list(range(n)) if group_ids is None else list(group_ids)
        jobs = [(i, j) for i in range(n) for j in range(group_size)]
        # Micro-batches of similar prompt lengths pad less; samples do not depend on their batch.
        order = sorted(range(len(jobs)), key=lambda k: len(prompts[jobs[k][0]]))
        rollouts: list[Rollout | None] = [None] * len(jobs)
        sampling = sampling or self.sampling
        with self._lock:
            self._calls += 1
            seed_of_call = call_seed(seed, self.seed, self.worker_id, self._calls)
            for first in range(0, len(order), self.micro_batch_size):
                picked = order[first : first + self.micro_batch_size]
                chunk = [jobs[k] for k in picked]
                made = self._micro_batch(
                    chunk, prompts, group_ids, seed_of_call, metadata, item_indices, sampling
                )
                for k, rollout in zip(picked, made, strict=True):
                    rollouts[k] = rollout
        return rollouts

    def _micro_batch(
        self, chunk, prompts, group_ids, call_seed, metadata, item_indices, sampling
    ) -> list[Rollout]:
        policy = self.policy
        ids, mask = left_pad([prompts[i] for i, _ in chunk], policy.pad_id)
        device = policy.device
        generators = [
            torch.Generator(device=device).manual_seed(sample_seed(call_seed, group_ids[i], j))
            for i, j in chunk
        ]
        tokens, stats = generate_with_stats(
            policy,
            ids.to(device),
            attention_mask=mask.to(device),
            mask_id=policy.mask_id,
            eos_id=policy.eos_id,
            generator=generators,
            **sampling.as_kwargs(),
        )
        log.debug("%r: %d rows, nfe %d, %.2f tokens/forward, %.2fs", self, len(chunk), stats.nfe,
                  stats.tokens_per_forward, stats.seconds)  # fmt: skip
        responses = tokens[:, ids.shape[1] :].cpu().tolist()
        return [
            self._rollout(
                prompts[i], responses[row], group_ids[i], j, stats, metadata, item_indices, i
            )
            for row, (i, j) in enumerate(chunk)
        ]

    def _rollout(self, prompt, response, group_id, j, stats, metadata, item_indices, i) -> Rollout:
        tokenizer = self.policy.tokenizer
        text = tokenizer.decode(response, skip_special_tokens=True) if tokenizer is not None else ""
        return Rollout(
            prompt_ids=list(prompt),
            response_ids=response,
            text=text,
            policy_version=self._version,
            group_id=group_id,
            sample_index=j,
            nfe=stats.nfe,
            tokens_per_forward=stats.tokens_per_forward,
            seconds=stats.seconds,
            worker_id=self.worker_id,
            item_index=None if item_indices is None else int(item_indices[i]),
            metadata=dict(metadata[i]) if metadata is not None else {},
        )
