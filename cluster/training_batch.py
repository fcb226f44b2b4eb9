"""From scored rollouts to the learner's TrainBatch: staleness filter, rewards, advantages, masks,
and the split of the global batch into one shard of whole groups per learner rank.

Advantages are normalised over the whole global batch's groups here, before sharding, so every
rank sees the same advantages whatever the number of ranks; masks are drawn here (synchronous
mode) from a generator seeded by (seed, step), so they do not depend on the number of ranks
either and a resumed run draws the same ones.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from learner.advantages import group_advantages
from learner.batch import TrainBatch, build_train_batch
from learner.elbo import draw_masks


def assemble_batch(outputs: list[dict], stream, world, *, step: int, version: int, max_staleness: int):
    """(TrainBatch or None, metrics, dashboard extras). Drops stale or unscored samples, counted."""
    rollouts, masks, ell_old = [], [], []
    for out in outputs:
        rollouts.extend(out["rollouts"])
        if "masks" in out:
            masks.append(out["masks"])
            ell_old.append(out["ell_old"])
    results = stream.score(rollouts)
    statuses = Counter(r["status"] for r in results)
    keep = []
    for i, (rollout, result) in enumerate(zip(rollouts, results, strict=True)):
        staleness = version - rollout.policy_version
        if staleness > max_staleness:
            stream.accounting["dropped/stale"] += 1
        elif not math.isfinite(result["score"]):
            stream.accounting["dropped/unscored"] += 1
        else:
            keep.append(i)
    scores = [r["score"] for r in results if math.isfinite(r["score"])]
    info = {
        "reward/mean": float(np.mean(scores)) if scores else float("nan"),
        "reward/accuracy": statuses.get("ok", 0) / max(len(results), 1),
        "rollout/samples": len(rollouts),
        "rollout/tokens": sum(len(r.response_ids) for r in rollouts),
        "rollout/nfe_mean": float(np.mean([r.nfe for r in rollouts])) if rollouts else 0.0,
        "rollout/tokens_per_forward": float(np.mean([r.tokens_per_forward for r in rollouts])) if rollouts else 0.0,
        "rollout/staleness_mean": float(np.mean([version - r.policy_version for r in rollouts])) if rollouts else 0.0,
        "rollout/staleness_max": max((version - r.policy_version for r in rollouts), default=0),
        "rollout/version_min": min((r.policy_version for r in rollouts), default=-1),
        "rollout/version_max": max((r.policy_version for r in rollouts), default=-1),
        "rollout/workers": len({r.worker_id for r in rollouts}),
        # A fingerprint of the sampled tokens: equal across runs that should be identical (resume).
        "rollout/fingerprint": sum((i + 1) * t for r in rollouts for i, t in enumerate(r.response_ids)) % 2**31,
        "rollout/old_terms_from_rollout": int(bool(masks)),
        "perf/rollout_busy_seconds": sum(out.get("seconds", 0.0) for out in outputs),
        "reward/latency_mean": float(np.mean([r.get("seconds", 0.0) for r in results])) if results else 0.0,
    }
    info.update({f"reward/status_{s}": n / max(len(results), 1) for s, n in statuses.items()})
    extras = {"statuses": dict(statuses), "latencies": [r.get("seconds", 0.0) for r in results]}
    if not keep:
        return None, info, extras
    kept = [rollouts[i] for i in keep]
    batch = build_train_batch(
        [r.prompt_ids for r in kept],
        [r.response_ids for r in kept],
        [results[i]["score"] for i in keep],
        [r.group_id for r in kept],
        pad_id=world.pad_id,
        policy_versions=[r.policy_version for r in kept],
    )
    batch.advantages = group_advantages(batch.rewards, batch.group_ids)
    if masks:
        idx = torch.tensor(keep)
        batch.masks = torch.from_numpy(np.concatenate(masks))[idx]
        batch.ell_old = torch.from_numpy(np.concatenate(ell_old))[idx]
    return batch, info, extras


def draw_step_masks(n: int, n_t: int, response_length: int, seed: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return draw_masks(n, n_t, response_length, gen)


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
