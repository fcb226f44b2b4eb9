"""Batch assembly for the learner group: whole groups per shard, masks independent of ranks."""

import torch

from cluster.training_batch import shard_batch
from learner.batch import build_train_batch
from learner.behaviour import MaskSpec, sample_masks


def _batch(groups: int, size: int):
    prompts = [[5 + g] * (2 + g % 3) for g in range(groups) for _ in range(size)]
    responses = [[7] * 6 for _ in prompts]
    rewards = [float(i % 2) for i in range(len(prompts))]
    group_ids = [g for g in range(groups) for _ in range(size)]
    return build_train_batch(prompts, responses, rewards, group_ids, pad_id=0)


def test_shards_hold_whole_groups_and_the_global_size():
    batch = _batch(groups=5, size=4)
    shards = shard_batch(batch, 2)
    assert sum(len(s) for s in shards) == len(batch)
    seen = [set(s.group_ids.tolist()) for s in shards]
    assert not (seen[0] & seen[1])
    for shard in shards:
        assert shard.global_batch_size == len(batch)
        for g in set(shard.group_ids.tolist()):
            assert int((shard.group_ids == g).sum()) == 4


def test_masks_depend_on_the_sample_not_on_the_layout():
    """Masks derive from (seed, step, group, sample index) only: the same sample gets the same
    masks whatever batch, shard or rollout worker it lands in, and another step gets others."""
    spec = MaskSpec(n_t=4, seed=1)
    whole = sample_masks(spec, 3, [0, 0, 1, 1], [0, 1, 0, 1], 16)
    alone = sample_masks(spec, 3, [1], [1], 16)
    assert torch.equal(whole[3], alone[0])
    assert not torch.equal(whole, sample_masks(spec, 4, [0, 0, 1, 1], [0, 1, 0, 1], 16))
    assert bool((whole.sum(-1) >= 1).all())
