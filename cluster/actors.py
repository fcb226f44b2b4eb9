"""Ray actors of a run: thin wrappers that put the plain workers on the cluster.

`RolloutActor` wraps rollout.RolloutWorker, `VerifierActor` rewards.VerifierWorker and
`LearnerActor` learner.LearnerWorker; each adds only what needs Ray or a process: threads per
reserved CPU, the learners' torch.distributed group, the weight-sync group, checkpoint I/O.
Actors are named (`rollout-3`, `verifier-1`, `learner-0`) by cluster.groups; the `__repr__`
below is what the Ray dashboard and the log prefixes show.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta

import numpy as np
import ray
import torch
import torch.distributed as dist

from cluster.config import RunConfig
from cluster.policy_factory import build_policy, set_threads
from cluster.weight_sync import (
    SyncGroup,
    SyncGroupSpec,
    free_port,
    numpy_buckets,
    plan_for,
    receive_weights,
    send_weights,
)
from dllm import resolve_dtype
from dllm.lazy_weights import LazyWeights
from dllm.weights import state_from_buckets
from learner.sharding import gather_full_state, load_full_state


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no progress bars in actor logs


def sampling_config(section):
    from rollout.config import SamplingConfig

    return SamplingConfig(**section.model_dump())


def learner_config(config: RunConfig):
    """The learner's dataclass from the run's `learner` section: every dataclass field but the
    seed has a section field of the same name (tests/cluster/test_config.py checks it); the
    resources (num_workers, num_cpus, ...) stay with the actor."""
    from dataclasses import fields

    from learner.worker import LearnerConfig

    section = config.learner.model_dump()
    names = {f.name for f in fields(LearnerConfig)} - {"seed"}
    return LearnerConfig(seed=config.seed, **{name: section[name] for name in names})


class _WeightReceiver:
    """Shared by actors that receive weights: the sync group and the bucket plan."""

    sync: SyncGroup | None = None
    buckets: list | None = None

    def join_sync(self, spec: SyncGroupSpec, rank: int, buckets: list) -> bool:
        if self.sync is not None:
            self.sync.close()
        self.sync = SyncGroup(spec, rank, self.policy_device())
        self.buckets = buckets
        return True


class RolloutActor(_WeightReceiver):
    def __init__(self, worker_id: str, config: dict) -> None:
        from rollout.worker import RolloutWorker

        self.worker_id, self.worker = worker_id, None  # set first: __repr__ must work if init fails
        self.config = RunConfig.model_validate(config)
        set_threads(self.config.rollout.num_cpus, self.config.rollout.num_threads)
        policy = build_policy(self.config)
        self.train_sampling = sampling_config(self.config.rollout.sampling)
        self.eval_sampling = sampling_config(self.config.rollout.eval_sampling)
        self.worker = RolloutWorker(
            worker_id, policy, self.train_sampling, seed=self.config.seed,
            micro_batch_size=self.config.rollout.micro_batch_size,
        )

    def __repr__(self) -> str:
        version = self.worker.policy_version if self.worker is not None else "-"
        return f"RolloutActor({self.worker_id}, v={version})"

    def policy_device(self) -> torch.device:
        return self.worker.policy.device

    def ping(self) -> dict:
        return {"worker_id": self.worker_id, "version": self.worker.policy_version}

    def generate(self, request: dict) -> dict:
        """request: prompts (token-id lists), group_ids, item_indices, group_size, seed, eval,
        and `old_terms` = {n_t, seed, micro_batch_size} in asynchronous mode (bgpo.md 2: the
        behaviour policy's ell_old under masks drawn here, reused by the learner)."""
        start = time.perf_counter()
        # The actor runs one method at a time, so switching the sampler settings is race-free.
        self.worker.sampling = self.eval_sampling if request.get("eval") else self.train_sampling
        rollouts = self.worker.generate(
            request["prompts"],
            request["group_size"],
            group_ids=request["group_ids"],
            seed=request["seed"],
            item_indices=request["item_indices"],
        )
        out = {"rollouts": rollouts, "worker_id": self.worker_id, "seconds": time.perf_counter() - start}
        if request.get("old_terms"):
            out.update(self._old_terms(rollouts, request["old_terms"]))
        return out

    @torch.no_grad()
    def _old_terms(self, rollouts: list, spec: dict) -> dict:
        from learner.batch import build_train_batch
        from learner.elbo import draw_masks, old_terms

        policy = self.worker.policy
        batch = build_train_batch(
            [r.prompt_ids for r in rollouts],
            [r.response_ids for r in rollouts],
            [0.0] * len(rollouts),
            list(range(len(rollouts))),
            pad_id=policy.pad_id,
        ).to(policy.device)
        gen = torch.Generator().manual_seed(spec["seed"])
        masks = draw_masks(len(rollouts), spec["n_t"], batch.response_length, gen)
        ell = old_terms(policy, batch, masks, micro_batch_size=spec["micro_batch_size"])
        return {"masks": masks.numpy(), "ell_old": ell.cpu().numpy()}

    def receive_weights(self, version: int) -> float:
        start = time.perf_counter()
        flats = receive_weights(self.sync, self.buckets)
        self.worker.load_weights(version, self.buckets, flats)
        return time.perf_counter() - start

    def load_numpy_weights(self, version: int, payload: tuple) -> float:
        """payload = (bucket plans, numpy arrays), resolved from the object store zero-copy."""
        start = time.perf_counter()
        buckets, arrays = payload
        self.worker.load_weights(version, buckets, arrays)
        return time.perf_counter() - start


class VerifierActor:
    def __init__(self, worker_id: str, config: dict) -> None:
        from rewards import ScoringOptions
        from rewards.verifier import VerifierWorker

        self.worker_id = worker_id
        cfg = RunConfig.model_validate(config)
        options = ScoringOptions(deadline_s=cfg.rewards.deadline_s, allow_unsandboxed=cfg.rewards.allow_unsandboxed)
        self.worker = VerifierWorker(
            worker_id, preset=cfg.task.preset, max_concurrency=cfg.rewards.max_concurrency, options=options
        )
        self.worker_id = worker_id

    def __repr__(self) -> str:
        return f"VerifierActor({self.worker_id})"

    def score(self, requests: list[dict]) -> list[dict]:
        return [r.to_dict() for r in self.worker.score_batch(requests)]

    def health(self) -> dict:
        return self.worker.health()

    def counters(self) -> dict:
        return self.worker.counters()

    def stall(self, seconds: float) -> bool:
        """Fault injection for drills and tests: occupy one of the actor's threads for `seconds`,
        as a verifier wedged in a native call would."""
        time.sleep(seconds)
        return True


class LearnerActor:
    """One learner rank. With `learner.sharding=fsdp` its policy is sharded across the group; the
    full weights that leave it (rollout sync, checkpoints) are then a copy gathered on the CPU of
    rank 0 after every change, `self.full_state`, since gathering needs every rank at once.
    With `learner.compute_dtype` the learner's weights are fp32 and rollout workers get them
    cast to model.dtype."""

    def __init__(self, rank: int, world_size: int, config: dict) -> None:
        self.rank, self.world_size = rank, world_size
        self.config = RunConfig.model_validate(config)
        self.sharded = self.config.learner.sharding == "fsdp"
        set_threads(self.config.learner.num_cpus, self.config.learner.num_threads)
        _quiet_transformers()
        self.master_dtype = "fp32" if self.config.learner.compute_dtype else None
        self.policy = build_policy(self.config, dtype=self.master_dtype)
        # What rollout workers hold: model.dtype (None: the learner's own dtype).
        self.export_dtype = resolve_dtype(self.config.model.dtype, self.policy.device) if self.master_dtype else None
        self.worker = None
        self.sync: SyncGroup | None = None
        self.buckets = None
        self.full_state: dict | None = None

    def __repr__(self) -> str:
        return f"LearnerActor(learner-{self.rank}/{self.world_size})"

    def endpoint(self) -> tuple[str, int]:
        """Address and a free port on this node, for the learner group's rendezvous."""
        return ray.util.get_node_ip_address(), free_port()

    def init_group(self, host: str, port: int) -> bool:
        """Join the learners' torch.distributed group (gloo on CPU, NCCL on GPU), then build the
        worker (which shards the policy under fsdp: every rank calls this at once)."""
        from learner.worker import LearnerWorker

        group = None
        if self.world_size > 1 or self.sharded:
            backend = "nccl" if self.policy.device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend,
                init_method=f"tcp://{host}:{port}",
                rank=self.rank,
                world_size=self.world_size,
                timeout=timedelta(seconds=300),
            )
            group = dist.group.WORLD
        self.worker = LearnerWorker(
            self.policy, learner_config(self.config), rank=self.rank, world_size=self.world_size, process_group=group
        )
        self._gather_full_state()
        return True

    def warm_start(self, examples: tuple, response_length: int) -> dict:
        import os

        from learner.sft import warm_start

        wc = self.config.warmup
        # Sharded, rank 0 trains a plain copy alone (the tiny model only has a warm start) and
        # loads the result into its shard; the others get it from the driver, as replicas do.
        policy = self.policy
        if self.sharded:
            policy = build_policy(self.config, dtype=self.master_dtype)
            load_full_state(policy.model, self.full_state)
        # Nothing else runs during the warm start: use every core of the node, then give them back.
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            stats = warm_start(
                policy, examples, response_length, max_steps=wc.steps, lr=wc.lr,
                seconds=wc.max_seconds, batch_size=wc.batch_size, seed=self.config.seed,
            )
        finally:
            set_threads(self.config.learner.num_cpus, self.config.learner.num_threads)
        if self.sharded:
            self._load_full_state(policy.model.state_dict())
        return stats

    def train_step(self, batch) -> dict:
        metrics = self.worker.step(batch.to(self.policy.device))
        self._gather_full_state()
        return metrics

    # ---- weights out ------------------------------------------------------------------------

    def _gather_full_state(self) -> None:
        """Sharded: every rank takes part in the gather; rank 0 keeps the copy."""
        if self.sharded:
            self.full_state = gather_full_state(self.policy.model, keep=self.rank == 0) or None

    def _load_full_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load whole tensors (every rank keeps its shard, if sharded). Sharded rank 0 first
        makes the copy that leaves, in the learner's dtypes, and loads from it: each tensor of a
        lazy `state` is read once."""
        if self.sharded and self.rank == 0:
            dtypes = {k: v.dtype for k, v in self.policy.model.state_dict().items()}
            state = self.full_state = {k: state[k].detach().to("cpu", dtypes[k], copy=True) for k in dtypes}
        load_full_state(self.policy.model, state)

    def weight_state(self) -> dict:
        """The weights rollout workers load, keyed as policy.model's state dict."""
        if self.sharded:
            if self.full_state is None:
                raise RuntimeError(f"learner-{self.rank} holds a shard only: weights leave from rank 0")
            return self.full_state
        return self.policy.model.state_dict()

    def weight_plan(self) -> list:
        """The bucket plan rollout workers receive, in their dtype (pack_bucket casts into it)."""
        self.buckets = self._plan(self.export_dtype)
        return self.buckets

    def _plan(self, dtype: torch.dtype | None) -> list:
        state = self.weight_state()
        if dtype is not None:  # shapes and dtypes are all a plan needs: meta tensors, no copies
            state = {k: torch.empty_like(v, device="meta", dtype=dtype if v.is_floating_point() else v.dtype)
                     for k, v in state.items()}
        return plan_for(state, self.config.weight_sync.bucket_mb)

    def sync_endpoint(self, epoch: int, world_size: int) -> SyncGroupSpec:
        backend = "nccl" if self.policy.device.type == "cuda" else "gloo"
        return SyncGroupSpec(ray.util.get_node_ip_address(), free_port(), world_size, epoch, backend)

    def join_sync(self, spec: SyncGroupSpec) -> bool:
        if self.sync is not None:
            self.sync.close()
        self.sync = SyncGroup(spec, 0, self.policy.device)
        return True

    def send_weights(self) -> dict:
        start = time.perf_counter()
        sent = send_weights(self.sync, self.weight_state(), self.buckets or self.weight_plan())
        return {"seconds": time.perf_counter() - start, "bytes": sent}

    def numpy_weights(self, exact: bool = False) -> tuple[list, list[np.ndarray]]:
        """The weights as object-store buckets: for rollout workers, or `exact` (the learner's
        own dtype) for the other learner ranks."""
        buckets = self._plan(None) if exact else self.buckets or self.weight_plan()
        return buckets, numpy_buckets(self.weight_state(), buckets)

    def load_numpy_weights(self, payload: tuple) -> bool:
        buckets, arrays = payload
        self._load_full_state(state_from_buckets(buckets, arrays))
        return True

    # ---- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, run_dir: str, step: int, trainer_state: dict, keep_last: int) -> str | None:
        """Rank 0 writes. Sharded, every rank must call it (the optimizer state is gathered);
        the others return None."""
        from cluster.checkpoint import save_checkpoint

        learner_state = self.worker.state_dict()
        if self.rank != 0:
            return None
        path = save_checkpoint(
            run_dir, step, policy=self.policy, learner_state=learner_state,
            trainer_state=trainer_state, keep_last=keep_last,
            weights=self.full_state if self.sharded else None,
        )
        return str(path)

    def load_checkpoint(self, path: str) -> bool:
        from pathlib import Path

        from cluster.checkpoint import load_learner_state
        from dllm import load_policy

        folder = Path(path) / "policy"
        weights = LazyWeights(folder)
        if set(weights) != set(self.policy.model.state_dict()):
            # A checkpoint that stores a tied weight once: transformers knows how to load it.
            weights = load_policy(folder, device="cpu", dtype=self.policy.dtype).model.state_dict()
        self._load_full_state(weights)
        self.worker.load_state_dict(load_learner_state(path))
        return True
