"""Weights as a few flat buffers: the unit of weight sync between learner and rollout workers.

A state dict is planned into buckets (one dtype each, at most `bucket_bytes`), each packed into one
contiguous 1-D tensor. Buckets travel over a torch.distributed broadcast or, as numpy views, through
the Ray object store; never one message per parameter, never pickled tensors. The plan (names,
shapes, offsets) is small metadata sent once per receiver.

For a fast transfer a bucket is cut into messages (`message_ranges`): a large tensor travels alone,
straight from its own storage (`source_view`, no packing copy), runs of small tensors are packed
into a reused staging buffer (`pack_range`). A receiver can hold its model's weights in flat
buffers laid out as the plan (`FlatWeights`), so messages land in parameter storage directly, with
a spare set so that an update is swapped in whole or not at all.
This module only packs, unpacks and lays out memory; it knows nothing about Ray or process groups.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

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


# ---- messages: how a bucket is cut for the wire ---------------------------------------------------


def message_ranges(bucket: WeightBucket, chunk_bytes: int, solo_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) element ranges covering the bucket's flat buffer, in order.

    A tensor of at least `solo_bytes` gets messages of its own (so it can be sent from its own
    storage); smaller neighbours are grouped; no message exceeds `chunk_bytes`. Depends on the
    plan only, so sender and receivers cut the same way without talking."""
    esize = torch.empty((), dtype=bucket.torch_dtype).element_size()
    chunk, solo = max(1, chunk_bytes // esize), max(1, solo_bytes // esize)
    ranges: list[tuple[int, int]] = []
    run_start = None  # start of a run of small tensors not yet emitted

    def emit(start: int, stop: int) -> None:
        ranges.extend((a, min(a + chunk, stop)) for a in range(start, stop, chunk))

    for spec in bucket.specs:
        if spec.numel >= solo:
            if run_start is not None:
                emit(run_start, spec.offset)
                run_start = None
            emit(spec.offset, spec.offset + spec.numel)
        elif run_start is None:
            run_start = spec.offset
    if run_start is not None:
        emit(run_start, bucket.numel)
    return ranges


def _overlapping(bucket: WeightBucket, start: int, stop: int) -> list[TensorSpec]:
    offsets = [s.offset for s in bucket.specs]
    first = bisect.bisect_right(offsets, start) - 1
    out = []
    for spec in bucket.specs[first:]:
        if spec.offset >= stop:
            break
        if spec.offset + spec.numel > start:
            out.append(spec)
    return out


def source_view(
    bucket: WeightBucket, state: dict[str, torch.Tensor], start: int, stop: int, device: torch.device
) -> torch.Tensor | None:
    """Elements [start, stop) of the bucket as a view of one source tensor's own storage, when
    they all lie in one contiguous tensor of the bucket's dtype on `device`; else None (pack)."""
    specs = _overlapping(bucket, start, stop)
    if len(specs) != 1:
        return None
    spec, tensor = specs[0], state[specs[0].name].detach()
    if tensor.dtype != bucket.torch_dtype or tensor.device != device or not tensor.is_contiguous():
        return None
    return tensor.reshape(-1)[start - spec.offset : stop - spec.offset]


def pack_range(
    bucket: WeightBucket, state: dict[str, torch.Tensor], start: int, stop: int, out: torch.Tensor
) -> torch.Tensor:
    """Copy elements [start, stop) of the bucket into `out[: stop - start]` (casting to the
    bucket's dtype and moving to out's device as needed); returns that slice."""
    dest = out[: stop - start]
    for spec in _overlapping(bucket, start, stop):
        lo, hi = max(start, spec.offset), min(stop, spec.offset + spec.numel)
        src = state[spec.name].detach().reshape(-1)[lo - spec.offset : hi - spec.offset]
        dest[lo - start : hi - start].copy_(src, non_blocking=False)
    return dest


# ---- the receiver's weights in flat buffers ---------------------------------------------------------


@dataclass
class FlatWeights:
    """A module's tensors turned into views of flat buffers laid out as a bucket plan.

    Messages are received into `targets()`; `commit()` makes the module use them. With `spare`
    (the default) there are two sets: targets are the set the module does not use, so a receive
    that fails half-way leaves the module untouched and commit is a pointer swap (no copy), at the
    cost of a second copy of the weights in memory. Without `spare` the targets ARE the module's
    weights: the caller must stop generation for the whole receive and treat a failed receive as
    torn weights (reload before generating again).
    Tied tensors (one Parameter under two names) use the first name's range; both are filled.
    """

    module: nn.Module
    buckets: list[WeightBucket]
    spare: bool = True
    live: list[torch.Tensor] = field(init=False)
    staged: list[torch.Tensor] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        validate_buckets(self.module, self.buckets)
        device = next(iter(self.module.state_dict().values())).device
        self.live = [torch.empty(b.numel, dtype=b.torch_dtype, device=device) for b in self.buckets]
        state = self.module.state_dict()
        with torch.no_grad():
            for bucket, flat in zip(self.buckets, self.live, strict=True):
                for spec in bucket.specs:
                    flat[spec.offset : spec.offset + spec.numel].copy_(state[spec.name].reshape(-1))
        self._bind(self.live)
        if self.spare:
            # Touched now (zero-filled), so the first receive does not pay the page faults.
            self.staged = [torch.zeros_like(flat) for flat in self.live]

    def targets(self) -> list[torch.Tensor]:
        """The buffers the next update is received into (one per bucket)."""
        return self.staged if self.staged is not None else self.live

    def commit(self) -> None:
        """Make the module use the received buffers (with a spare set: swap the two sets)."""
        if self.staged is not None:
            self._bind(self.staged)
            self.live, self.staged = self.staged, self.live

    def stage(self, flats: list[torch.Tensor | np.ndarray]) -> None:
        """Copy whole buckets (object-store arrays, fresh buffers) into the targets."""
        for bucket, target, flat in zip(self.buckets, self.targets(), flats, strict=True):
            target.copy_(from_numpy(bucket, flat) if isinstance(flat, np.ndarray) else flat)

    def _bind(self, flats: list[torch.Tensor]) -> None:
        seen: set[int] = set()
        with torch.no_grad():
            for bucket, flat in zip(self.buckets, flats, strict=True):
                views = unpack_bucket(bucket, flat)
                for spec in bucket.specs:
                    tensor = _module_tensor(self.module, spec.name)
                    if id(tensor) in seen:  # a tied weight: already bound under its first name
                        continue
                    seen.add(id(tensor))
                    tensor.data = views[spec.name]


def _module_tensor(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    if leaf in sub._parameters:
        return sub._parameters[leaf]
    if leaf in sub._buffers:
        return sub._buffers[leaf]
    raise KeyError(f"{name!r} is neither a parameter nor a buffer of the module")
