"""Weights as a few flat buffers: the unit of weight sync between learner and rollout workers.

A state dict is planned into buckets (one dtype each, at most `bucket_bytes`), each packed into one
contiguous 1-D tensor. Buckets travel over a torch.distributed broadcast or, as numpy views, through
the Ray object store; never one message per parameter, never pickled tensors. The plan (names,
shapes, offsets) is small metadata sent once per receiver. This module only packs and unpacks; it
knows nothing about Ray or process groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TensorSpec:
    name: str  # state-dict key
    shape: tuple[int, ...]
    offset: int  # first element inside the bucket's flat buffer
    numel: int


@dataclass(frozen=True)
class WeightBucket:
    dtype: str  # torch dtype name without the prefix, e.g. "float32"
    specs: tuple[TensorSpec, ...]
    numel: int  # total elements in the flat buffer

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.torch_dtype).element_size()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plan_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = 256 * 2**20
) -> list[WeightBucket]:
    """Group tensors by dtype, in order, into buckets of at most `bucket_bytes` (one tensor may exceed it)."""
    open_specs: dict[str, list[TensorSpec]] = {}
    open_numel: dict[str, int] = {}
    done: list[WeightBucket] = []
    for name, tensor in named_tensors:
        dt = _dtype_name(tensor.dtype)
        specs = open_specs.setdefault(dt, [])
        numel = open_numel.get(dt, 0)
        if specs and (numel + tensor.numel()) * tensor.element_size() > bucket_bytes:
            done.append(WeightBucket(dt, tuple(specs), numel))
            specs, numel = [], 0
            open_specs[dt] = specs
        specs.append(TensorSpec(name, tuple(tensor.shape), numel, tensor.numel()))
        open_numel[dt] = numel + tensor.numel()
    for dt, specs in open_specs.items():
        if specs:
            done.append(WeightBucket(dt, tuple(specs), open_numel[dt]))
    return done


def pack_bucket(bucket: WeightBucket, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """One contiguous 1-D CPU-or-device tensor holding every tensor of the bucket."""
    first = state[bucket.specs[0].name]
    flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=first.device)
    for spec in bucket.specs:
        flat[spec.offset : spec.offset + spec.numel].copy_(state[spec.name].detach().reshape(-1))
    return flat


def unpack_bucket(bucket: WeightBucket, flat: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """Views into `flat` (no copy), keyed by name; numpy buffers are wrapped zero-copy."""
    if isinstance(flat, np.ndarray):
        flat = torch.from_numpy(flat) if flat.flags.writeable else torch.from_numpy(flat.copy())
    if flat.dim() != 1 or flat.numel() != bucket.numel:
        raise ValueError(f"bucket buffer has shape {tuple(flat.shape)}, expected ({bucket.numel},)")
    if flat.dtype != bucket.torch_dtype:
        raise ValueError(f"bucket buffer has dtype {flat.dtype}, expected {bucket.torch_dtype}")
    return {s.name: flat[s.offset : s.offset + s.numel].view(s.shape) for s in bucket.specs}


def to_numpy(flat: torch.Tensor) -> np.ndarray:
    """A numpy view for the object store (bfloat16 has no numpy dtype: its bits travel as int16)."""
    flat = flat.detach().cpu()
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy()
    return flat.numpy()


def from_numpy(bucket: WeightBucket, array: np.ndarray) -> torch.Tensor:
    """Inverse of `to_numpy` for this bucket's dtype (read-only object-store arrays are copied once)."""
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if bucket.torch_dtype == torch.bfloat16:
        tensor = tensor.view(torch.bfloat16)
    return tensor


def validate_buckets(module: nn.Module, buckets: list[WeightBucket]) -> None:
    """Fail, naming the tensor, if the plan does not cover the module's state exactly."""
    state = module.state_dict()
    seen: set[str] = set()
    for bucket in buckets:
        for spec in bucket.specs:
            if spec.name not in state:
                raise KeyError(f"weight {spec.name!r} is not in the receiving model")
            target = state[spec.name]
            if tuple(target.shape) != spec.shape:
                raise ValueError(f"weight {spec.name!r}: shape {spec.shape} != model's {tuple(target.shape)}")
            if _dtype_name(target.dtype) != bucket.dtype:
                raise ValueError(f"weight {spec.name!r}: dtype {bucket.dtype} != model's {target.dtype}")
            seen.add(spec.name)
    missing = set(state) - seen
    if missing:
        raise KeyError(f"weights missing from the update: {sorted(missing)[:5]} ({len(missing)} in all)")


@torch.no_grad()
def load_buckets_into(
    module: nn.Module, buckets: list[WeightBucket], flats: list[torch.Tensor | np.ndarray]
) -> None:
    """Copy every bucket into the module's tensors; validates the whole update before copying any."""
    validate_buckets(module, buckets)
    update = state_from_buckets(buckets, flats)
    state = module.state_dict()  # tensors share storage with the parameters and buffers
    for name, value in update.items():
        state[name].copy_(value)


def state_from_buckets(
    buckets: list[WeightBucket], flats: list[torch.Tensor | np.ndarray]
) -> dict[str, torch.Tensor]:
    """Every tensor of the update by name, as views into the buffers (no copy)."""
    if len(buckets) != len(flats):
        raise ValueError(f"{len(buckets)} bucket plans but {len(flats)} buffers")
    state = {}
    for bucket, flat in zip(buckets, flats, strict=True):
        state.update(unpack_bucket(bucket, from_numpy(bucket, flat) if isinstance(flat, np.ndarray) else flat))
    return state
