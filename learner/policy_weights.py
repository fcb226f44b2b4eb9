"""The learner's weights as they leave and enter it: full tensors, whether the policy is sharded.

Rollout workers and checkpoints need whole tensors. A replicated learner has them (its module's
state dict); a sharded one (FSDP2) holds a shard per rank, and gathering needs every rank at once,
so after every change all ranks gather together and rank 0 keeps a CPU copy, `full`. Loading
(a restore, the warm start's result, another rank's weights) goes through `load`, which keeps that
copy in step. `export_dtype` is the dtype rollout workers hold (model.dtype) when the learner keeps
fp32 master weights. This module does not send anything anywhere (cluster/weight_sync.py does).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from learner.sharding import gather_full_state, load_full_state


class PolicyWeights:
    """One rank's view of the policy's full weights (`module`: the HF model inside the Policy)."""

    def __init__(self, module: torch.nn.Module, *, rank: int, sharded: bool,
                 export_dtype: torch.dtype | None = None) -> None:
        self.module, self.rank, self.sharded = module, rank, sharded
        self.export_dtype = export_dtype  # None: rollout workers hold the learner's own dtype
        self._full: dict[str, torch.Tensor] | None = None

    def refresh(self) -> None:
        """After the weights changed. Sharded: every rank must call it (a collective)."""
        if self.sharded:
            self._full = gather_full_state(self.module, keep=self.rank == 0) or None

    def full(self) -> Mapping[str, torch.Tensor]:
        """The whole weights, keyed as the module's state dict (sharded: rank 0 only)."""
        if not self.sharded:
            return self.module.state_dict()
        if self._full is None:
            raise RuntimeError(f"learner-{self.rank} holds a shard only: weights leave from rank 0")
        return self._full

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load whole tensors (sharded: every rank keeps its shard, rank 0 the copy). Each tensor
        of a lazy `state` (dllm.lazy_weights) is read once."""
        if self.sharded and self.rank == 0:
            dtypes = {k: v.dtype for k, v in self.module.state_dict().items()}
            state = self._full = {k: state[k].detach().to("cpu", dtypes[k], copy=True) for k in dtypes}
        load_full_state(self.module, state)

    def export_layout(self, *, exact: bool = False) -> dict[str, torch.Tensor]:
        """Shapes and dtypes of what leaves (meta tensors, no copies): the rollout dtype, or the
        learner's own (`exact`, for other learner ranks)."""
        dtype = None if exact else self.export_dtype
        return {k: torch.empty_like(v, device="meta",
                                    dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
                for k, v in self.full().items()}
