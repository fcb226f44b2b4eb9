"""FSDP2 sharding of the learner's policy: each rank holds 1/world of the weights, gradients and
optimizer state, so a model too large to replicate per GPU (LLaDA-8B in full fine-tuning) fits.

`learner.sharding=fsdp` applies `torch.distributed.fsdp.fully_shard` to every transformer block
(the classes the model names in `_no_split_modules`, as transformers does for device maps) and
then to the root. Gradients are reduce-scattered in each backward with a SUM (divide factor 1):
the learner already weights each sample by 1 / global batch size, so the sum over ranks is the
full-batch gradient, the same contract as the replicated path's all-reduce (learner/distributed.py).

Every rank must run the same number of forwards and backwards, because each one all-gathers the
weights; the worker pads shorter shards with ghost rows (`TrainBatch.pad_to`) to keep them in step.

Full (unsharded) tensors cross this boundary in two places only: `gather_full_state` (weights
out, for rollout workers and checkpoints; a collective) and `load_full_state` (weights in; local,
every rank passes the whole tensor and keeps its own shard).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

SHARDING_MODES = ("replicate", "fsdp")


def block_classes(model: nn.Module) -> set[str]:
    """The class names FSDP wraps one unit each: the model's `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    present = {type(m).__name__ for m in model.modules()} & names
    if not present:
        raise ValueError(
            f"cannot shard {type(model).__name__}: it names no transformer block class in "
            f"_no_split_modules ({sorted(names) or 'empty'}), so FSDP has no unit to wrap"
        )
    return present


def shard_model(model: nn.Module, compute_dtype: torch.dtype | None = None) -> list[FSDPModule]:
    """Shard `model` in place over the default process group: one FSDP unit per block, then
    the root (embeddings, final norm, head). Returns every FSDP unit, root last.

    `compute_dtype`: forward and backward run in it while the stored weights, their gradients and
    so the optimizer state keep the model's own dtype (fp32 master weights); gradients are
    reduced in fp32."""
    if not dist.is_initialized():
        raise RuntimeError("learner.sharding=fsdp needs an initialised torch.distributed group")
    names = block_classes(model)
    units = [m for m in model.modules() if type(m).__name__ in names]
    mp_policy = MixedPrecisionPolicy()
    if compute_dtype is not None:
        mp_policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for unit in units:
        fully_shard(unit, mp_policy=mp_policy)
    fully_shard(model, mp_policy=mp_policy)
    units = [*units, model]
    for unit in units:
        # A plain SUM: the losses already carry 1 / global batch. (Forcing SUM also keeps FSDP
        # off PREMUL_SUM, which gloo lacks.)
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return units


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


@torch.no_grad()
def gather_full_state(module: nn.Module, *, keep: bool = True) -> dict[str, torch.Tensor]:
    """The whole state dict as plain CPU tensors. A collective: every rank must call it, in the
    same order. A rank with `keep=False` takes part and returns {}, so only the rank that needs
    the copy holds one (for LLaDA-8B in fp32 that is 32 GB of host memory)."""
    state = {name: _gathered(value, keep) for name, value in module.state_dict().items()}
    return state if keep else {}


def _gathered(value, keep: bool):
    """A plain CPU copy of a (possibly sharded) tensor, or None when not `keep`; a collective for
    a DTensor, which is unsharded on the device one tensor at a time. Non-tensors (an
    optimizer's step counts) pass through."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    if not keep:
        return None
    return value.detach().to("cpu", copy=True) if torch.is_tensor(value) else value


@torch.no_grad()
def load_full_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a full state dict into a sharded (or plain) module. Local: every rank passes the
    whole tensors and keeps its own shard, no communication. Tensors are read one at a time,
    so `state` may load them lazily (dllm.lazy_weights)."""
    own = module.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise KeyError(
            f"state does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    for name, target in own.items():
        value = state[name]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{name}: shape {tuple(value.shape)} != model's {tuple(target.shape)}")
        if isinstance(target, DTensor):
            target.to_local().copy_(_shard_like(value.to(target.dtype), target).to_local())
        else:
            target.copy_(value)


@torch.no_grad()
def gather_optimizer_state(optimizer: torch.optim.Optimizer, *, keep: bool = True) -> dict | None:
    """`optimizer.state_dict()` with every sharded tensor gathered to the CPU, one at a time: the
    format of an unsharded optimizer's, so checkpoints move between sharding modes. A collective
    (see gather_full_state); a rank with `keep=False` takes part and returns None."""
    state = optimizer.state_dict()
    gathered = {index: {key: _gathered(value, keep) for key, value in entry.items()}
                for index, entry in state["state"].items()}
    return {**state, "state": gathered} if keep else None


@torch.no_grad()
def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimizer state dict (every rank passes the whole of it): each per-parameter
    tensor is cut to the parameter's shard first, one at a time, so the full state never sits
    on the device at once. Local, no communication."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = {}
    for index, entry in state["state"].items():
        param = params[int(index)]
        sharded[index] = {
            key: _shard_like(value, param)
            if key != "step" and isinstance(param, DTensor) and torch.is_tensor(value)
            and tuple(value.shape) == tuple(param.shape) else value
            for key, value in entry.items()
        }
    optimizer.load_state_dict({**state, "state": sharded})


def _shard_like(value: torch.Tensor, param: DTensor) -> DTensor:
    # Every rank holds the full tensor: slice it, do not scatter.
    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                             src_data_rank=None)


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor for sharded parameters; the plain total norm."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
