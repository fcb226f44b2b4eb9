"""Two learner ranks over gloo give the same update as one rank with the same global batch."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dllm import build_tiny_policy
from learner import LearnerConfig, LearnerWorker, TrainBatch, draw_masks

CONFIG = {"n_t": 4, "micro_batch_size": 4, "mc_chunk": 2, "lr": 1e-3, "bucket_bytes": 64 * 1024}
SHARDS = (slice(0, 6), slice(6, 8))  # unequal shards of whole groups: 3 groups and 1 group


def _policy():
    return build_tiny_policy(hidden_size=32, num_layers=2, num_heads=4, seed=0, dtype=torch.float64)


def _rank_main(rank: int, world_size: int, init_file: str, batch: TrainBatch, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        policy = _policy()
        learner = LearnerWorker(policy, LearnerConfig(**CONFIG), rank=rank, world_size=world_size)
        metrics = learner.accumulate_gradients(batch.select(SHARDS[rank]))
        grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
        metrics.update(learner.apply_update())
        state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        result = {"weights": state, "grads": grads, "metrics": metrics}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_rank(make_batch, tmp_path: Path):
    batch = make_batch(_policy(), n_groups=4, group_size=2)
    assert batch.global_batch_size == 8
    masks = draw_masks(
        len(batch), CONFIG["n_t"], batch.response_length, torch.Generator().manual_seed(0)
    )
    batch = replace(batch, masks=masks)

    mp.spawn(
        _rank_main, args=(2, str(tmp_path / "init"), batch, str(tmp_path)), nprocs=2, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    single_policy = _policy()
    single = LearnerWorker(single_policy, LearnerConfig(**CONFIG))
    metrics = single.accumulate_gradients(batch)
    for name, p in single_policy.named_parameters():
        for r in range(2):
            assert torch.allclose(ranks[r]["grads"][name], p.grad, rtol=0, atol=1e-12), name
    metrics.update(single.apply_update())
    for name, value in single_policy.state_dict().items():
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), (
            name
        )  # identical ranks
        assert torch.allclose(ranks[0]["weights"][name], value, rtol=0, atol=1e-10), name
    for key in ("train/grad_norm", "train/loss", "train/masked_tokens", "train/responses"):
        assert abs(ranks[0]["metrics"][key] - metrics[key]) <= 1e-10, key
    assert metrics["train/grad_norm"] > 0
