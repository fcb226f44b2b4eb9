"""Ray actors of a run: thin wrappers that put the plain workers on the cluster.

`RolloutActor` wraps rollout.RolloutWorker, `VerifierActor` rewards.VerifierWorker and
`LearnerActor` learner.LearnerWorker; each adds only what needs Ray or a process: threads per
reserved CPU, the learners' torch.distributed group, the weight-sync group, checkpoint I/O.
Actors are named (`rollout-3`, `verifier-1`, `learner-0`) by cluster.groups; the `__repr__`
below is what the Ray dashboard and the log prefixes show.
"""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from cluster import network
from cluster.config import RunConfig
from cluster.contracts import RolloutBatch, RolloutRequest
from cluster.policy_factory import build_policy, set_threads
from cluster.weight_sync import (
    SyncGroup,
    SyncGroupSpec,
    numpy_buckets,
    plan_for,
    receive_into,
    receive_weights,
    send_weights,
)
from dllm import resolve_dtype
from dllm.lazy_weights import LazyWeights
from dllm.weights import state_from_buckets
from learner.batch import TrainBatch
from learner.behaviour import behaviour_terms
from rewards.types import RewardResult


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no progress bars in actor logs


class _WeightReceiver:
    """Shared by actors that receive weights: the sync group and the bucket plan."""

    sync: SyncGroup | None = None
    buckets: list | None = None

    flat = None  # the worker's weights laid out as the bucket plan (rollout.RolloutWorker only)

    def join_sync(self, spec: SyncGroupSpec, rank: int, buckets: list) -> bool:
        if self.sync is not None:
            self.sync.close()
        self.sync = SyncGroup(spec, rank, self.policy_device(), interface=self.config.cluster.network_interface)
        adopt = getattr(self.worker, "adopt_flat_weights", None)
        if adopt is not None and (self.flat is None or self.flat.buckets != buckets):
            self.flat = adopt(buckets)
        self.buckets = buckets
        return True


class RolloutActor(_WeightReceiver):
    """One rollout worker, built by `rollout.engine`: diffusion (rollout.RolloutWorker), hf
    (rollout.causal_sampler.CausalSampler) or vllm (rollout.vllm_client.VLLMRolloutClient, a vLLM
    engine in a child process that starts from the initial weights written to a temp folder).
    All three share generate / load_weights / policy_version, so the rest of the actor is one."""

    def __init__(self, worker_id: str, config: RunConfig) -> None:
        self.worker_id, self.worker = worker_id, None  # set first: __repr__ must work if init fails
        self.config = config
        rc = config.rollout
        set_threads(rc.num_cpus, rc.num_threads, rc.cpu_affinity)
        policy = build_policy(config)
        if rc.engine == "diffusion":
            from rollout.worker import RolloutWorker

            self.sampling = {False: rc.sampling, True: rc.eval_sampling}
            self.worker = RolloutWorker(worker_id, policy, rc.sampling, seed=config.seed,
                                        micro_batch_size=rc.micro_batch_size)
            return
        from rollout.causal_sampler import CausalSampler, CausalSamplingConfig

        self.sampling = {False: CausalSamplingConfig.from_sampling(rc.sampling),
                         True: CausalSamplingConfig.from_sampling(rc.eval_sampling)}
        if rc.engine == "hf":
            self.worker = CausalSampler(worker_id, policy, self.sampling[False], seed=config.seed,
                                        micro_batch_size=rc.micro_batch_size)
        else:
            self.worker = self._vllm_client(worker_id, policy)

    def _vllm_client(self, worker_id: str, policy):
        """A vLLM worker process on the initial weights (save_pretrained into a temp folder that
        lives as long as this actor; later versions arrive in place through load_weights)."""
        import shutil
        import tempfile
        import weakref

        from rollout.vllm_client import VLLMRolloutClient

        folder = tempfile.mkdtemp(prefix=f"bgpo-{worker_id}-policy-")
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        policy.save_pretrained(folder)
        vc = self.config.rollout.vllm
        self.device = policy.device  # weights are received here, then sent to the engine
        dtype = str(policy.dtype).removeprefix("torch.")
        return VLLMRolloutClient(
            worker_id, folder, self.sampling[False], seed=self.config.seed, dtype=dtype,
            max_model_len=vc.max_model_len, kv_cache_gb=vc.kv_cache_gb, start_timeout=vc.start_timeout_s,
            request_timeout=self.config.trainer.rollout_timeout_s, tokenizer=policy.tokenizer,
            engine_options=vc.engine_options, max_batch_tokens=vc.max_batch_tokens,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"RolloutActor({self.worker_id})"

    def policy_device(self) -> torch.device:
        if self.config.rollout.engine == "vllm":
            return self.device  # the engine holds its weights in another process
        return self.worker.policy.device

    def ping(self) -> dict:
        return {"worker_id": self.worker_id, "version": self.worker.policy_version}

    def generate(self, request: RolloutRequest) -> RolloutBatch:
        """G samples per prompt of `request`; with `request.behaviour` (asynchronous mode) also
        the behaviour policy's masks and ell_old for them (learner/behaviour.py), computed here,
        under the weights that sampled them."""
        started = time.time()
        sampling = self.sampling[request.eval]
        rollouts = self.worker.generate(
            request.prompts, request.group_size, group_ids=request.group_ids, seed=request.seed,
            item_indices=request.item_indices, sampling=sampling,
        )
        terms = None
        if request.behaviour is not None:
            terms = behaviour_terms(
                self.worker.policy, [r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts],
                spec=request.behaviour, step=request.step, group_ids=[r.group_id for r in rollouts],
                sample_indices=[r.sample_index for r in rollouts],
                micro_batch_size=self.config.learner.micro_batch_size,
            )
        return RolloutBatch(rollouts, self.worker_id, started, time.time(), terms)

    def receive_weights(self, version: int) -> float:
        """One broadcast: straight into the spare set of the model's flat weights, then swapped in
        whole; a receive that fails leaves the model as it was (nothing is committed)."""
        start = time.perf_counter()
        if self.flat is not None:
            receive_into(self.sync, self.buckets, self.flat)
            self.worker.commit_weights(version, self.flat)
        else:  # samplers without flat weights (the causal engines): fresh buffers, then a load
            self.worker.load_weights(version, self.buckets, receive_weights(self.sync, self.buckets))
        return time.perf_counter() - start

    def load_numpy_weights(self, version: int, payload: tuple) -> float:
        """payload = (bucket plans, numpy arrays), resolved from the object store zero-copy."""
        start = time.perf_counter()
        buckets, arrays = payload
        if self.flat is not None and self.flat.buckets == buckets:
            self.flat.stage(arrays)
            self.worker.commit_weights(version, self.flat)
        else:
            self.worker.load_weights(version, buckets, arrays)
        return time.perf_counter() - start


class VerifierActor:
    def __init__(self, worker_id: str, config: RunConfig) -> None:
        from rewards import ScoringOptions
        from rewards.verifier import VerifierWorker

        self.worker_id = worker_id
        options = ScoringOptions(deadline_s=config.rewards.deadline_s, allow_unsandboxed=config.rewards.allow_unsandboxed)
        self.worker = VerifierWorker(
            worker_id, preset=config.task.preset, max_concurrency=config.rewards.max_concurrency, options=options
        )

    def __repr__(self) -> str:
        return f"VerifierActor({self.worker_id})"

    def score(self, requests: list[dict]) -> list[RewardResult]:
        return self.worker.score_batch(requests)

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
    """One learner rank: a thin wrapper that gives `learner.LearnerWorker` a process group, the
    weight-sync group and the checkpoint folder. With `learner.compute_dtype` the learner keeps
    fp32 weights and rollout workers get them cast to model.dtype (the worker's export dtype)."""

    def __init__(self, rank: int, world_size: int, config: RunConfig) -> None:
        self.rank, self.world_size, self.config = rank, world_size, config
        set_threads(config.learner.num_cpus, config.learner.num_threads, config.learner.cpu_affinity)
        _quiet_transformers()
        self.master_dtype = "fp32" if config.learner.compute_dtype else None
        self.policy = build_policy(config, dtype=self.master_dtype)
        self.worker = None
        self.sync: SyncGroup | None = None
        self.buckets = None

    def __repr__(self) -> str:
        return f"LearnerActor(learner-{self.rank}/{self.world_size})"

    def endpoint(self) -> str:
        """The learner group's rendezvous URL, on this node's own address (cluster/network.py)."""
        me = network.resolve(interface=self.config.cluster.network_interface)
        return network.init_method(me.address, network.free_port(me.address))

    def init_group(self, init_method: str) -> bool:
        """Join the learners' torch.distributed group (gloo on CPU, NCCL on GPU), then build the
        worker (which shards the policy under fsdp: every rank calls this at once)."""
        from learner.worker import LearnerWorker

        group = None
        if self.world_size > 1 or self.config.learner.sharding == "fsdp":
            backend = "nccl" if self.policy.device.type == "cuda" else "gloo"
            interface = self.config.cluster.network_interface
            network.pin_sockets(network.resolve(interface=interface), override=interface is not None)
            dist.init_process_group(
                backend,
                init_method=init_method,
                rank=self.rank,
                world_size=self.world_size,
                timeout=timedelta(seconds=self.config.trainer.start_timeout_s),
            )
            group = dist.group.WORLD
        export = resolve_dtype(self.config.model.dtype, self.policy.device) if self.master_dtype else None
        self.worker = LearnerWorker(
            self.policy, self.config.learner, seed=self.config.seed, export_dtype=export,
            rank=self.rank, world_size=self.world_size, process_group=group,
        )
        return True

    def warm_start(self, examples: tuple, response_length: int) -> dict:
        wc = self.config.warmup
        plain = build_policy(self.config, dtype=self.master_dtype) if self.worker.sharded else None
        return self.worker.warm_start(examples, response_length, steps=wc.steps, lr=wc.lr,
                                      batch_size=wc.batch_size, seconds=wc.max_seconds, plain_copy=plain)

    def train_step(self, batch: TrainBatch) -> dict:
        return self.worker.step(batch.to(self.policy.device))

    # ---- weights out ------------------------------------------------------------------------

    def weight_plan(self) -> list:
        """The bucket plan rollout workers receive, in their dtype (pack_bucket casts into it)."""
        self.buckets = plan_for(self.worker.weights.export_layout(), self.config.weight_sync.bucket_mb)
        return self.buckets

    def sync_endpoint(self, epoch: int, world_size: int) -> SyncGroupSpec:
        backend = "nccl" if self.policy.device.type == "cuda" else "gloo"
        me = network.resolve(interface=self.config.cluster.network_interface)
        ws = self.config.weight_sync
        return SyncGroupSpec(me.address, network.free_port(me.address), world_size, epoch, backend,
                             timeout_s=ws.timeout_s, shape=ws.shape, chunk_mb=ws.chunk_mb)

    def join_sync(self, spec: SyncGroupSpec) -> bool:
        if self.sync is not None:
            self.sync.close()
        self.sync = SyncGroup(spec, 0, self.policy.device, interface=self.config.cluster.network_interface)
        return True

    def send_weights(self) -> dict:
        start = time.perf_counter()
        sent = send_weights(self.sync, self.worker.weights.full(), self.buckets or self.weight_plan())
        return {"seconds": time.perf_counter() - start, "bytes": sent}

    def numpy_weights(self, exact: bool = False) -> tuple[list, list[np.ndarray]]:
        """The weights as object-store buckets: for rollout workers, or `exact` (the learner's
        own dtype) for the other learner ranks."""
        buckets = (plan_for(self.worker.weights.export_layout(exact=True), self.config.weight_sync.bucket_mb)
                   if exact else self.buckets or self.weight_plan())
        return buckets, numpy_buckets(self.worker.weights.full(), buckets)

    def load_numpy_weights(self, payload: tuple) -> bool:
        buckets, arrays = payload
        self.worker.load_weights(state_from_buckets(buckets, arrays))
        return True

    # ---- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, run_dir: str, step: int, trainer_state: dict, keep_last: int) -> str | None:
        """Rank 0 writes. Sharded, every rank must call it (the optimizer state is gathered);
        the others return None."""
        from cluster.checkpoint import save_checkpoint

        learner_state = self.worker.state_dict()
        if self.rank != 0:
            return None
        weights = self.worker.weights
        path = save_checkpoint(
            run_dir, step, policy=self.policy, learner_state=learner_state,
            trainer_state=trainer_state, keep_last=keep_last,
            weights=dict(weights.full()) if weights.sharded else None,
        )
        return str(path)

    def load_checkpoint(self, path: str) -> bool:
        from pathlib import Path

        from cluster.checkpoint import load_learner_state

        folder = Path(path) / "policy"
        weights = LazyWeights(folder)
        if set(weights) != set(self.policy.model.state_dict()):
            # A checkpoint that stores a tied weight once: transformers knows how to load it (the
            # model's own factory, so causal and diffusion checkpoints alike).
            weights = build_policy(self.config, path=str(folder), dtype=self.master_dtype).model.state_dict()
        self.worker.load_weights(weights)
        self.worker.load_state_dict(load_learner_state(path))
        return True
