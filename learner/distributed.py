"""Gradient and metric reduction across learner ranks of an existing torch.distributed group.

The learner weights every micro-batch by |mb| / global_batch_size, so each rank's accumulated
gradient is its share of the full-batch gradient and a SUM all-reduce gives the full-batch
gradient exactly, however unevenly the batch is sharded. Gradients travel in flat buckets (one
collective per ~`bucket_bytes` of gradients, not one per parameter), the pattern DDP uses.

This module does not create process groups (the cluster does: gloo on CPU, NCCL on GPU) and does
not broadcast weights to rollout workers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def _buckets(params: list[torch.nn.Parameter], bucket_bytes: int) -> list[list[torch.nn.Parameter]]:
    """Consecutive parameters grouped into buckets of one dtype/device and at most ~bucket_bytes."""
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        last = buckets[-1] if buckets else None
        fits = last is not None and size + nbytes <= bucket_bytes
        same_kind = last is not None and (last[0].dtype, last[0].device) == (p.dtype, p.device)
        if fits and same_kind:
            last.append(p)
            size += nbytes
        else:
            buckets.append([p])
            size = nbytes
    return buckets


def allreduce_gradients(
    params: Iterable[torch.nn.Parameter],
    process_group: dist.ProcessGroup | None = None,
    *,
    bucket_bytes: int = 25 * 2**20,
) -> int:
    """SUM-all-reduce `.grad` of every parameter in flat buckets; returns the number of collectives.

    A parameter without a gradient on this rank gets a zero gradient first, so every rank
    reduces the same buckets in the same order.
    """
    trainable = [p for p in params if p.requires_grad]
    for p in trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets = _buckets(trainable, bucket_bytes)
    for bucket in buckets:
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=process_group)
        offset = 0
        for p in bucket:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n
    return len(buckets)


def allreduce_sum(
    values: torch.Tensor, process_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """SUM of a small tensor (metric sums and counts) over the ranks; returns a new tensor."""
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
    return out
