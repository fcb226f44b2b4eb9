"""From scored rollouts to the learner's TrainBatch: staleness filter, rewards, behaviour terms,
and the split of the global batch into one shard of whole groups per learner rank.

Advantages are computed by `learner.build_train_batch` over the whole global batch, before
sharding, so every rank sees the same advantages whatever the number of ranks. MC masks are not
drawn here: they derive per sample from (seed, step, group, index) (learner/behaviour.py), on the
learner in synchronous mode and on the rollout actor in asynchronous mode. For an objective that
declares `rollout_logprobs` (GRPO on a causal policy), asynchronous mode attaches the sampler's
own token log-probs as the batch's old_logprobs; synchronous mode leaves them to the learner,
which recomputes them on-policy (so engine numerics never bias an on-policy ratio).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from cluster.contracts import RolloutBatch
from learner.batch import TrainBatch, build_train_batch
from learner.objectives import Objective
from rewards.types import RewardResult


def assemble_batch(outputs: list[RolloutBatch], results: list[RewardResult], *, objective: Objective,
                   step: int, version: int, max_staleness: int, pad_id: int, accounting: Counter):
    """(TrainBatch or None, metrics, dashboard extras). Drops stale or unscored samples, counted."""
    rollouts = [r for out in outputs for r in out.rollouts]
    statuses = Counter(r.status for r in results)
    keep = []
    for i, (rollout, result) in enumerate(zip(rollouts, results, strict=True)):
        if version - rollout.policy_version > max_staleness:
            accounting["dropped/stale"] += 1
        elif not math.isfinite(result.score) or result.extra.get("unscored"):
            # no verdict at all (queue limit, cancelled, closed): its 0.0 is not a reward
            accounting["dropped/unscored"] += 1
        else:
            keep.append(i)
    info = rollout_metrics(outputs, results, version)
    extras = {"statuses": dict(statuses), "latencies": [r.seconds for r in results],
              "queue_seconds": [r.extra.get("queue_s", 0.0) for r in results]}
    if not keep:
        return None, info, extras
    kept = [rollouts[i] for i in keep]
    old_logprobs = None
    if objective.rollout_logprobs and max_staleness > 0:
        missing = [r.worker_id for r in kept if not getattr(r, "logprobs", None)]
        if missing:
            raise ValueError(f"objective {objective.name} needs the samplers' log-probs of stale rollouts, "
                             f"but rollouts from {sorted(set(missing))} carry none")
        old_logprobs = [r.logprobs for r in kept]
    info["rollout/old_logprobs_from_rollout"] = int(old_logprobs is not None)
    batch = build_train_batch(
        [r.prompt_ids for r in kept],
        [r.response_ids for r in kept],
        [results[i].score for i in keep],
        [r.group_id for r in kept],
        sample_indices=[r.sample_index for r in kept],
        step=step,
        pad_id=pad_id,
        scale_advantages=objective.scale_advantages,
        old_logprobs=old_logprobs,
    )
    terms = [out.behaviour for out in outputs]
    if objective.behaviour_terms and all(t is not None for t in terms) and terms:
        index = torch.tensor(keep)
        batch.masks = torch.from_numpy(np.concatenate([t.masks for t in terms]))[index]
        batch.ell_old = torch.from_numpy(np.concatenate([t.ell_old for t in terms]))[index]
    return batch, info, extras


def rollout_metrics(outputs: list[RolloutBatch], results: list[RewardResult], version: int) -> dict:
    rollouts = [r for out in outputs for r in out.rollouts]
    scores = [r.score for r in results if math.isfinite(r.score)]
    statuses = Counter(r.status for r in results)
    staleness = [version - r.policy_version for r in rollouts]
    info = {
        "reward/mean": float(np.mean(scores)) if scores else float("nan"),
        "reward/accuracy": statuses.get("ok", 0) / max(len(results), 1),
        "rollout/samples": len(rollouts),
        "rollout/tokens": sum(len(r.response_ids) for r in rollouts),
        "rollout/nfe_mean": float(np.mean([r.nfe for r in rollouts])) if rollouts else 0.0,
        "rollout/tokens_per_forward": float(np.mean([r.tokens_per_forward for r in rollouts])) if rollouts else 0.0,
        "rollout/staleness_mean": float(np.mean(staleness)) if rollouts else 0.0,
        "rollout/staleness_max": max(staleness, default=0),
        "rollout/version_min": min((r.policy_version for r in rollouts), default=-1),
        "rollout/version_max": max((r.policy_version for r in rollouts), default=-1),
        "rollout/workers": len({r.worker_id for r in rollouts}),
        # A fingerprint of the sampled tokens: equal across runs that should be identical (resume).
        "rollout/fingerprint": sum((i + 1) * t for r in rollouts for i, t in enumerate(r.response_ids)) % 2**31,
        "rollout/old_terms_from_rollout": int(any(out.behaviour is not None for out in outputs)),
        "perf/rollout_busy_seconds": sum(out.seconds for out in outputs),
        "reward/latency_mean": float(np.mean([r.seconds for r in results])) if results else 0.0,
    }
    info.update({f"reward/status_{s}": n / max(len(results), 1) for s, n in statuses.items()})
    return info


def shard_batch(batch: TrainBatch, ranks: int) -> list[TrainBatch]:
    """One shard per rank, whole groups only, sizes as even as the groups allow."""
    batch.global_batch_size = len(batch)
    if ranks == 1:
        return [batch]
    groups = list(dict.fromkeys(batch.group_ids.tolist()))
    per_rank = [groups[r::ranks] for r in range(ranks)]
    shards = []
    for chosen in per_rank:
        if not chosen:
            raise ValueError(f"{len(groups)} groups cannot feed {ranks} learner ranks")
        index = torch.nonzero(torch.isin(batch.group_ids, torch.tensor(chosen))).squeeze(1)
        shards.append(batch.select(index))
    return shards
