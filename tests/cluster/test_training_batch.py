"""Batch assembly for the learner group: whole groups per shard, masks independent of ranks."""

import torch

from cluster.training_batch import draw_step_masks, shard_batch
from learner.batch import build_train_batch


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


def test_step_masks_are_reproducible_and_step_dependent():
    a = draw_step_masks(8, 4, 16, seed=1, step=3)
    b = draw_step_masks(8, 4, 16, seed=1, step=3)
    c = draw_step_masks(8, 4, 16, seed=1, step=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert bool((a.sum(-1) >= 1).all())
