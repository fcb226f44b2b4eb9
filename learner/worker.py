"""`LearnerWorker`: one optimizer step of the policy per rollout batch (bgpo.md section 5).

    masks (learner/behaviour.py, if the batch has none) -> ell_old (no grad, if absent)
    -> zero_grad -> micro-batches x MC chunks, each weighted |mb| / global_batch_size
    -> all-reduce SUM (world_size > 1) -> clip_grad_norm_ -> skip if non-finite -> AdamW

Advantages come with the batch (learner/batch.py computes them over the global batch). With
`sharding="fsdp"` the policy is sharded (learner/sharding.py): gradients are reduce-scattered
in each backward instead of all-reduced at the end, and every rank's shard of the batch is padded
with ghost rows to the longest one, so that all ranks run the same passes.

`bgpo` back-propagates every chunk of MC samples as soon as it is built (one chunk's graph alive
at a time); `elbo_ratio` keeps all n_t graphs of a micro-batch alive and back-propagates once;
`diffu_grpo` runs its own inner iterations (several optimizer steps per batch); `grpo` (causal
policies) back-propagates each micro-batch's exact token log-probs (learner/grpo_step.py).

The worker also owns the policy's weights as they leave and enter (`self.weights`, whole tensors
even when sharded), its optimizer state for checkpoints, and the tiny model's warm start.
A plain class, no Ray: the cluster wraps it in an actor and owns the process group. It does not
generate, score, write files or broadcast weights (the cluster does).
"""

from __future__ import annotations

import copy
import os
import resource
import time
from collections.abc import Mapping

import torch

from dllm.precision import resolve_dtype
from learner.batch import TrainBatch
from learner.behaviour import MaskSpec, sample_masks
from learner.config import LearnerConfig
from learner.diffu_grpo import completion_mask, draw_prompt_masks, token_logps, token_logps_no_grad
from learner.distributed import allreduce_gradients, allreduce_sum
from learner.elbo import elbo_terms, old_terms
from learner.objectives import (
    bgpo_bound,
    clipped_bgpo_bound,
    diffu_grpo_objective,
    elbo_ratio_objective,
    get_objective,
)
from learner.policy_weights import PolicyWeights
from learner.sharding import (
    full_norm,
    gather_optimizer_state,
    load_optimizer_state,
    shard_model,
)


def _peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max_memory_allocated since the step began. CPU: the process's peak RSS so far
    (ru_maxrss, monotone over the process lifetime, not per step)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


class LearnerWorker:
    """Owns the policy's optimizer on one rank and turns a `TrainBatch` into one update.

    policy: the `dllm.Policy` to train (its parameters are updated in place).
    seed: the run seed; MC masks derive from it per sample (learner/behaviour.py), and the
        diffu_grpo prompt masks from a generator seeded by it (+ rank).
    export_dtype: what rollout workers hold, when it differs from the learner's dtype.
    rank, world_size, process_group: this learner's place in an already initialised
        torch.distributed group (gloo on CPU, NCCL on GPU); world_size 1 needs none.
    reference_policy: diffu_grpo's KL reference; default a frozen copy of `policy` as given.
        It is not part of `state_dict()`: on resume, pass the starting checkpoint again.
    """

    def __init__(
        self,
        policy,
        config: LearnerConfig,
        *,
        seed: int = 0,
        export_dtype: torch.dtype | None = None,
        rank: int = 0,
        world_size: int = 1,
        process_group=None,
        reference_policy=None,
    ) -> None:
        self.policy = policy.eval()  # no dropout: the old and new passes must see the same function
        self.config = config
        self.objective = get_objective(config.objective)
        self.rank, self.world_size, self.process_group = rank, world_size, process_group
        if world_size > 1 and not torch.distributed.is_initialized():
            raise RuntimeError(
                "world_size > 1 needs an initialised torch.distributed process group"
            )
        self.sharded = config.sharding == "fsdp"
        self.mask_spec = MaskSpec(config.n_t, seed)
        # A run's resolved config has no "auto" left; built directly, the worker is on-policy.
        self.clip_eps = config.ratio_clip()
        if self.objective.reference_policy and config.kl_beta() > 0 and reference_policy is None:
            # d1's and GRPO's reference is the policy before RL; a frozen copy of the starting weights.
            reference_policy = copy.deepcopy(policy).eval().requires_grad_(False)
        if self.sharded:
            # Shard before the optimizer exists: it must hold the sharded parameters.
            compute = resolve_dtype(config.compute_dtype, self.device) if config.compute_dtype else None
            shard_model(policy.model, compute)
            if reference_policy is not None:
                shard_model(reference_policy.model, compute)
        self.reference_policy = reference_policy
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.generator = torch.Generator().manual_seed(seed + rank)
        self.weights = PolicyWeights(policy.model, rank=rank, sharded=self.sharded, export_dtype=export_dtype)
        self.weights.refresh()
        self.steps = 0  # optimizer steps applied
        self.skipped_steps = 0  # steps skipped for a non-finite gradient norm

    def __repr__(self) -> str:
        return (
            f"LearnerWorker(rank={self.rank}/{self.world_size}, objective={self.config.objective})"
        )

    @property
    def device(self) -> torch.device:
        return self.policy.device

    # ---- public API -------------------------------------------------------------------------

    def step(self, batch: TrainBatch) -> dict[str, float]:
        """One rollout batch -> one optimizer step (diffu_grpo: `iterations` steps). Metrics dict."""
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.objective.accumulation == "one_step":
            metrics = self._diffu_grpo_step(batch)
        else:
            metrics = self.accumulate_gradients(batch)
            metrics.update(self.apply_update())
        self.weights.refresh()
        # Optimizer steps attempted on this batch: with train/skipped, whether the weights changed.
        metrics["train/inner_steps"] = float(
            self.config.diffu_grpo.iterations if self.objective.accumulation == "one_step" else 1)
        metrics["perf/step_seconds"] = time.perf_counter() - start
        metrics["perf/peak_memory_bytes"] = float(_peak_memory_bytes(self.device))
        return metrics

    def accumulate_gradients(self, batch: TrainBatch) -> dict[str, float]:
        """Fill `.grad` with the full-batch gradient of the loss (bgpo / elbo_ratio), no step.

        The gradient equals that of  -sum_s w_s * objective_s  with w_s = 1 / global_batch_size,
        whatever micro_batch_size, mc_chunk and world_size are.
        """
        if self.objective.accumulation == "one_step":
            raise ValueError("diffu_grpo takes several steps per batch: call step()")
        if self.objective.accumulation == "causal":
            return self._grpo_accumulate(batch)
        batch = self.prepare(batch)
        self.optimizer.zero_grad(set_to_none=True)
        # Metric sums: loss, sum |z|, count of z, clipped count, masked tokens, rows.
        sums = torch.zeros(6, dtype=torch.float64)
        for start in range(0, len(batch), self.config.micro_batch_size):
            mb = batch.select(slice(start, start + self.config.micro_batch_size))
            if self.objective.accumulation == "per_sample":
                sums += self._bgpo_micro_batch(mb)
            else:
                sums += self._elbo_ratio_micro_batch(mb)
        metrics = self._finish_accumulation(batch, sums)
        metrics["train/n_t"] = float(batch.masks.shape[1])
        return metrics

    def prepare(self, batch: TrainBatch) -> TrainBatch:
        """The batch on the policy's device with masks and ell_old filled in: in synchronous mode
        this worker's weights are the behaviour policy (learner/behaviour.py)."""
        batch = batch.to(self.device)
        if batch.masks is None:
            masks = sample_masks(self.mask_spec, batch.step, batch.group_ids.tolist(),
                                 batch.sample_indices.tolist(), batch.response_length)
            batch.masks, batch.ell_old = masks.to(self.device), None
        batch = self._pad_to_longest_shard(batch)
        if batch.ell_old is None:
            batch.ell_old = self.old_terms(batch)
        return batch

    def _pad_to_longest_shard(self, batch: TrainBatch) -> TrainBatch:
        """Sharded: pad to the longest shard of the group (ghost rows), so every rank runs the
        same number of forwards and backwards and no weight all-gather waits forever."""
        if not self.sharded or self.world_size == 1:
            return batch
        longest = torch.tensor([len(batch)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(
            longest, op=torch.distributed.ReduceOp.MAX, group=self.process_group
        )
        return batch.pad_to(int(longest.item()))

    def old_terms(self, batch: TrainBatch, policy=None) -> torch.Tensor:
        """ell_j under `policy` (default: this worker's) for the batch's masks, no grad: [N, n_t]."""
        if batch.masks is None:
            raise ValueError("old_terms needs batch.masks (learner.behaviour.sample_masks)")
        return old_terms(
            policy if policy is not None else self.policy,
            batch,
            batch.masks,
            micro_batch_size=self.config.micro_batch_size,
            mc_chunk=self.config.mc_chunk,
        )

    def state_dict(self) -> dict:
        """Optimizer, step counters and mask RNG state (the policy's weights are saved separately).
        Sharded, the optimizer state is gathered: every rank must call this together, and only
        rank 0 gets it (the others get None in its place, saving a full copy per rank)."""
        if self.sharded:
            optimizer = gather_optimizer_state(self.optimizer, keep=self.rank == 0)
        else:
            optimizer = self.optimizer.state_dict()
        return {
            "optimizer": optimizer,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "generator": self.generator.get_state(),
        }

    def warm_start(self, examples: tuple, response_length: int, *, steps: int, lr: float,
                   batch_size: int, seconds: float | None = None, plain_copy=None) -> dict:
        """The tiny model's supervised warm start (learner/sft.py) on this worker's weights, using
        every core of the node (nothing else runs then): masked-diffusion SFT for a diffusion
        policy, next-token cross-entropy for a causal one (`sft.supervised_loss`, by the policy's
        kind). Sharded, training runs on `plain_copy`, an unsharded policy of the same
        architecture, whose result is loaded into the shards."""
        from learner.sft import supervised_loss, warm_start

        policy = self.policy
        if self.sharded:
            if plain_copy is None:
                raise ValueError("a sharded learner warm-starts an unsharded copy: pass plain_copy")
            plain_copy.model.load_state_dict(self.weights.full())
            policy = plain_copy
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            stats = warm_start(policy, examples, response_length, max_steps=steps, lr=lr,
                               seconds=seconds, batch_size=batch_size, seed=self.mask_spec.seed,
                               loss_fn=supervised_loss(policy))
        finally:
            torch.set_num_threads(threads)
        if self.sharded:
            self.weights.load(policy.model.state_dict())  # keeps rank 0's copy: no collective
        return stats

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the policy's weights with whole tensors (a restore, another rank's copy).
        Not a collective: a rank may load alone."""
        self.weights.load(state)

    def load_state_dict(self, state: dict) -> None:
        if self.sharded:
            load_optimizer_state(self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.skipped_steps = int(state["skipped_steps"])
        self.generator.set_state(state["generator"])

    # ---- bgpo and elbo_ratio ----------------------------------------------------------------

    def _chunks(self, n_t: int) -> list[slice]:
        """MC sample indices in chunks of mc_chunk (n_t from the batch's masks, which may be supplied)."""
        c = self.config.mc_chunk
        return [slice(j, min(j + c, n_t)) for j in range(0, n_t, c)]

    def _bgpo_micro_batch(self, mb: TrainBatch) -> torch.Tensor:
        """One backward per MC chunk (bgpo.md section 5): loss = -sum(g_j) / (G * n_t)."""
        cfg, sums = self.config, torch.zeros(6, dtype=torch.float64)
        n_t, live = mb.masks.shape[1], mb.live_mask
        for cols in self._chunks(n_t):
            ell = elbo_terms(
                self.policy, mb.input_ids, mb.attention_mask, mb.masks[:, cols], mb.response_length
            )
            ell_old = mb.ell_old[:, cols].to(ell.dtype)
            if self.clip_eps is None:
                g, clipped = (
                    bgpo_bound(ell, ell_old, mb.advantages),
                    torch.zeros_like(ell, dtype=torch.bool),
                )
            else:
                g, clipped = clipped_bgpo_bound(
                    ell, ell_old, mb.advantages, self.clip_eps, cfg.dual_clip
                )
            loss = -g.sum() / (mb.global_batch_size * n_t)
            loss.backward()  # frees this chunk's graph before the next chunk is built
            z = (ell - ell_old).detach()  # ghost rows have A = 0: no gradient, and no metric below
            sums += self._stats(loss, z[live], clipped[live], float(mb.masks[live][:, cols].sum()))
        sums[5] += int(live.sum())
        return sums

    def _elbo_ratio_micro_batch(self, mb: TrainBatch) -> torch.Tensor:
        """All n_t graphs of the micro-batch alive, then one backward: loss = -sum(J_s) / G."""
        ells = [
            elbo_terms(
                self.policy, mb.input_ids, mb.attention_mask, mb.masks[:, cols], mb.response_length
            )
            for cols in self._chunks(mb.masks.shape[1])
        ]
        ell = torch.cat(ells, dim=1)
        ell_old = mb.ell_old.to(ell.dtype)
        loss = -elbo_ratio_objective(ell, ell_old, mb.advantages).sum() / mb.global_batch_size
        loss.backward()
        live = mb.live_mask
        no_clip = torch.zeros_like(ell[live], dtype=torch.bool)
        z = (ell - ell_old).detach()[live]
        sums = self._stats(loss, z, no_clip, float(mb.masks[live].sum()))
        sums[5] += int(live.sum())
        return sums

    @staticmethod
    def _stats(
        loss: torch.Tensor, z: torch.Tensor, clipped: torch.Tensor, tokens: float
    ) -> torch.Tensor:
        """The metric sums of one backward: loss, sum |z|, count of z, clipped count, tokens, 0 rows."""
        values = [
            float(loss.detach()),
            float(z.abs().sum()),
            z.numel(),
            float(clipped.sum()),
            tokens,
            0.0,
        ]
        return torch.tensor(values, dtype=torch.float64)

    def _finish_accumulation(self, batch: TrainBatch, sums: torch.Tensor) -> dict[str, float]:
        """All-reduce gradients and metric sums across ranks; metrics are global."""
        live = batch.live_mask
        extra = torch.tensor(
            [
                float(batch.rewards[live].double().sum()),
                float(batch.advantages[live].abs().sum()),
                batch.response_length * int(live.sum()),
            ],
            dtype=torch.float64,
        )
        sums = torch.cat([sums, extra])
        if self.world_size > 1 and not self.sharded:  # FSDP reduce-scattered in each backward
            allreduce_gradients(
                self.params, self.process_group, bucket_bytes=self.config.bucket_bytes
            )
        if self.world_size > 1:  # on the policy's device: NCCL reduces CUDA tensors only
            sums = allreduce_sum(sums.to(self.device), self.process_group).cpu()
        loss, abs_z, n_z, clipped, masked, rows, reward_sum, abs_adv, tokens = sums.tolist()
        return {
            "train/loss": loss,
            "train/objective": -loss,
            "train/mean_abs_z": abs_z / n_z,
            "train/clip_fraction": clipped / n_z,
            "train/masked_tokens": masked,
            "train/tokens": tokens,
            "train/responses": rows,
            "train/reward_mean": reward_sum / rows,
            "train/advantage_abs_mean": abs_adv / rows,
        }

    # ---- the update -------------------------------------------------------------------------

    def apply_update(self) -> dict[str, float]:
        """Clip the global grad norm, skip the step when it is non-finite, else AdamW."""
        max_norm = self.config.grad_clip if self.config.grad_clip else float("inf")
        norm = full_norm(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        finite = bool(torch.isfinite(norm))
        if finite:
            self.optimizer.step()
            self.steps += 1
        else:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "train/grad_norm": float(norm),
            "train/skipped": 0.0 if finite else 1.0,
            "train/optimizer_steps": float(self.steps),
            "train/lr": float(self.optimizer.param_groups[0]["lr"]),
        }

    # ---- grpo (causal policies) ---------------------------------------------------------------

    def _grpo_accumulate(self, batch: TrainBatch) -> dict[str, float]:
        """Gradient of the GRPO loss (learner/grpo_step.py) in `.grad`, all-reduced; metrics."""
        from learner.grpo_step import accumulate_grpo_gradients

        batch = self._pad_to_longest_shard(batch.to(self.device))
        cfg = self.config.grpo
        self.optimizer.zero_grad(set_to_none=True)
        sums = accumulate_grpo_gradients(
            self.policy, batch, cfg, micro_batch_size=self.config.micro_batch_size,
            reference_policy=self.reference_policy,
        )  # fmt: skip
        metrics = self._finish_accumulation(batch, sums.core)
        metrics["train/mean_abs_log_ratio"] = metrics.pop("train/mean_abs_z")
        metrics["train/completion_tokens"] = metrics.pop("train/masked_tokens")
        metrics["train/ratio_max"] = sums.ratio_max
        metrics["train/old_logprobs_from_rollout"] = float(batch.old_logprobs is not None)
        if cfg.beta > 0:
            kl = torch.tensor([sums.kl_sum], dtype=torch.float64)
            if self.world_size > 1:
                kl = allreduce_sum(kl.to(self.device), self.process_group).cpu()
            metrics["train/kl"] = float(kl.item()) / metrics["train/responses"]
        return metrics

    # ---- diffu_grpo -------------------------------------------------------------------------

    def _diffu_grpo_step(self, batch: TrainBatch) -> dict[str, float]:
        """d1: prompt masks per iteration drawn up front; old and reference log-probs computed
        before the first update; then `iterations` clipped-ratio steps on the same batch."""
        cfg = self.config.diffu_grpo
        batch = self._pad_to_longest_shard(batch.to(self.device))
        # d1 averages the loss over the completion tokens up to and including the first EOS; the
        # count is global (all ranks), so the gradient does not depend on the number of ranks.
        tokens = completion_mask(batch.response_ids, self.policy.eos_id) & batch.live_mask.unsqueeze(1)
        total = torch.tensor([float(tokens.sum())], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            total = allreduce_sum(total, self.process_group)
        total_tokens = max(float(total.item()), 1.0)
        mbs = self.config.micro_batch_size
        prompt_masks = [
            draw_prompt_masks(
                batch.attention_mask, batch.response_length, cfg.prompt_mask_prob, self.generator
            )
            for _ in range(cfg.iterations)
        ]
        old = [
            token_logps_no_grad(self.policy, batch, pm, micro_batch_size=mbs) for pm in prompt_masks
        ]
        ref = [None] * cfg.iterations
        if cfg.beta > 0:
            ref = [
                token_logps_no_grad(self.reference_policy, batch, pm, micro_batch_size=mbs)
                for pm in prompt_masks
            ]
        history = [
            self._diffu_grpo_iteration(batch, prompt_masks[i], old[i], ref[i], tokens, total_tokens)
            for i in range(cfg.iterations)
        ]
        metrics = {k: sum(h[k] for h in history) / len(history) for k in history[0]}
        metrics["train/loss_first_iteration"] = history[0]["train/loss"]
        metrics["train/loss_last_iteration"] = history[-1]["train/loss"]
        metrics["train/skipped"] = float(sum(h["train/skipped"] for h in history))
        metrics["train/optimizer_steps"] = float(self.steps)
        return metrics

    def _diffu_grpo_iteration(self, batch, prompt_masks, old, ref, tokens, total_tokens) -> dict[str, float]:
        cfg = self.config.diffu_grpo
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(6, dtype=torch.float64)
        for start in range(0, len(batch), self.config.micro_batch_size):
            rows = slice(start, start + self.config.micro_batch_size)
            logp = token_logps(
                self.policy,
                batch.input_ids[rows],
                batch.attention_mask[rows],
                prompt_masks[rows],
                batch.response_length,
            )
            ref_rows = None if ref is None else ref[rows]
            obj, clipped = diffu_grpo_objective(
                logp, old[rows], ref_rows, batch.advantages[rows], cfg.clip_eps, cfg.beta
            )
            live = batch.live_mask[rows]
            counted = tokens[rows]  # ghost rows count no token: A = 0, but the KL would still pull
            # d1: sum over the counted tokens of the whole batch / their number.
            loss = -(obj * counted).sum() / total_tokens
            loss.backward()
            log_ratio = (logp - old[rows]).detach()[counted]
            sums += self._stats(loss, log_ratio, clipped[counted], float(log_ratio.numel()))
            sums[5] += int(live.sum())
        metrics = self._finish_accumulation(batch, sums)
        metrics["train/mean_abs_log_ratio"] = metrics.pop("train/mean_abs_z")
        metrics["train/masked_tokens"] = metrics["train/tokens"]
        metrics.update(self.apply_update())
        return metrics
