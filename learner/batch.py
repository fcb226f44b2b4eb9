"""`TrainBatch`: the learner's input, one rollout batch (or one rank's shard of it).

Layout (the project's one convention): each row is a LEFT-padded prompt followed by a response
of exactly L tokens, so the response is always the last L positions and lines up across rows.
LLaDA pads the response tail with EOS; those EOS tokens are part of the response and count.

`build_train_batch` computes the group advantages (the one place they are computed, over the whole
global batch before it is sharded). `masks` and `ell_old` come from the behaviour policy
(learner/behaviour.py): the learner fills them in synchronous mode, the rollout worker supplies them
in asynchronous mode. `old_logprobs` (causal policies, GRPO) are the sampler's own token log-probs,
carried from the rollouts when they may be stale. This module only holds and slices data: it computes nothing about the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from dllm.padding import left_pad
from learner.advantages import group_advantages


@dataclass
class TrainBatch:
    """N responses (N = rows on this rank); every tensor's first dimension is N."""

    # [N, T] long; left-padded prompt ++ response, response = last L columns
    input_ids: torch.Tensor
    # [N, T] long/bool; 1 on real tokens (prompt and response), 0 on padding
    attention_mask: torch.Tensor
    response_length: int  # L; the responses are input_ids[:, -L:]
    rewards: torch.Tensor  # [N] float; scalar reward per response (NaN makes the step skip)
    group_ids: torch.Tensor  # [N] long; responses to the same prompt share a group id (GRPO groups)
    sample_indices: torch.Tensor  # [N] long; index of the response inside its group, 0..G-1
    # responses in the whole batch across learner ranks (each micro-batch weighs |mb| / this)
    global_batch_size: int
    advantages: torch.Tensor  # [N] float64; group-relative (bgpo.md section 3), see build_train_batch
    step: int = 0  # the RL step the batch trains (with group and sample index, it picks the masks)
    masks: torch.Tensor | None = None  # [N, n_t, L] bool; True = masked (bgpo.md section 2)
    ell_old: torch.Tensor | None = None  # [N, n_t] float; behaviour-policy ELBO terms for `masks`
    live: torch.Tensor | None = None  # [N] bool; False on ghost rows (see pad_to); None = all live
    # [N, L] float; log-prob of each response token under the policy that sampled it (causal
    # samplers; 0 after the completion). None: the learner recomputes them on-policy.
    old_logprobs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n, t = self.input_ids.shape
        if self.attention_mask.shape != (n, t):
            raise ValueError(
                f"attention_mask {tuple(self.attention_mask.shape)} != input_ids {(n, t)}"
            )
        if not 0 < self.response_length <= t:
            raise ValueError(f"response_length {self.response_length} not in 1..{t}")
        for name in ("rewards", "group_ids", "sample_indices", "advantages", "live"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected ({n},)")
        if self.masks is not None and (
            self.masks.dim() != 3 or self.masks.shape[::2] != (n, self.response_length)
        ):
            raise ValueError(
                f"masks has shape {tuple(self.masks.shape)}, expected ({n}, n_t, {self.response_length})"
            )
        if self.ell_old is not None:
            if self.masks is None:
                raise ValueError("ell_old given without the masks it was computed with")
            if self.ell_old.shape != self.masks.shape[:2]:
                raise ValueError(
                    f"ell_old {tuple(self.ell_old.shape)} != masks[:2] {tuple(self.masks.shape[:2])}"
                )
        if self.old_logprobs is not None and (
            self.old_logprobs.shape != (n, self.response_length) or not self.old_logprobs.is_floating_point()
        ):
            raise ValueError(
                f"old_logprobs has shape {tuple(self.old_logprobs.shape)} ({self.old_logprobs.dtype}), "
                f"expected floats of shape ({n}, {self.response_length})"
            )
        live_rows = n if self.live is None else int(self.live.sum())
        if self.global_batch_size < live_rows:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} < rows on this rank {live_rows}"
            )
        if not bool(self.attention_mask[:, -self.response_length :].bool().all()):
            raise ValueError("response positions must all be real tokens (attention_mask 1)")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_ids(self) -> torch.Tensor:
        """[N, L] the response tokens."""
        return self.input_ids[:, -self.response_length :]

    def select(self, index: torch.Tensor | slice) -> TrainBatch:
        """Rows `index` (a slice or a LongTensor) of every per-row field; scalars are kept."""
        return TrainBatch(**self._rows(index))

    def _rows(self, index: torch.Tensor | slice) -> dict:
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value[index] if isinstance(value, torch.Tensor) else value
        return values

    @property
    def live_mask(self) -> torch.Tensor:
        """[N] bool, True on real rows."""
        if self.live is None:
            return torch.ones(len(self), dtype=torch.bool, device=self.input_ids.device)
        return self.live

    def pad_to(self, n: int) -> TrainBatch:
        """This batch with ghost rows appended up to `n` rows: copies of row 0 with advantage 0
        and `live` False, so they add nothing to a bgpo or elbo_ratio gradient and are left out
        of every metric. Sharded learners use them to run the same number of passes per rank."""
        extra = n - len(self)
        if extra < 0:
            raise ValueError(f"cannot pad {len(self)} rows down to {n}")
        if extra == 0:
            return self
        device = self.input_ids.device
        index = torch.cat([torch.arange(len(self)), torch.zeros(extra, dtype=torch.long)])
        values = self._rows(index.to(device))
        live = torch.cat([self.live_mask, torch.zeros(extra, dtype=torch.bool, device=device)])
        values["live"] = live
        values["advantages"] = torch.where(live, values["advantages"], 0.0)
        return TrainBatch(**values)

    def to(self, device: torch.device | str) -> TrainBatch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def pad_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-pad each prompt and append its response: (input_ids [N, T], attention_mask [N, T], L).

    Every response must have the same length L (the sampler produces fixed-length responses).
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(
            f"need as many prompts as responses, got {len(prompts)} and {len(responses)}"
        )
    lengths = {len(r) for r in responses}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"responses must share one non-zero length, got lengths {sorted(lengths)}")
    response_length = lengths.pop()
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    input_ids, attention_mask = left_pad(seqs, pad_id)
    return input_ids, attention_mask, response_length


def positions_in_groups(group_ids: Sequence[int]) -> list[int]:
    """Each row's index among the earlier rows of its group (0, 1, ... per group id)."""
    seen: dict = {}
    out = []
    for g in group_ids:
        out.append(seen.get(g, 0))
        seen[g] = out[-1] + 1
    return out


def build_train_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    group_ids: Sequence[int],
    *,
    pad_id: int,
    sample_indices: Sequence[int] | None = None,
    step: int = 0,
    scale_advantages: bool = True,
    global_batch_size: int | None = None,
    old_logprobs: Sequence[Sequence[float]] | None = None,
) -> TrainBatch:
    """A `TrainBatch` from token-id lists, with its group advantages.

    `scale_advantages`: divide by the group's std (GRPO, BGPO) or not (d1's diffu-GRPO); the
    objective says which (`Objective.scale_advantages`). `sample_indices` default to each row's
    position within its group; the global size defaults to N (one rank). `old_logprobs`: the
    sampler's per-token log-probs of each response (L per row), for a causal policy's stale rollouts."""
    input_ids, attention_mask, response_length = pad_sequences(prompts, responses, pad_id)
    n = len(prompts)
    indices = positions_in_groups(group_ids) if sample_indices is None else list(sample_indices)
    reward_tensor = torch.tensor(list(rewards), dtype=torch.float32)
    group_tensor = torch.tensor(list(group_ids), dtype=torch.long)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_length=response_length,
        rewards=reward_tensor,
        group_ids=group_tensor,
        sample_indices=torch.tensor(indices, dtype=torch.long),
        global_batch_size=n if global_batch_size is None else global_batch_size,
        advantages=group_advantages(reward_tensor, group_tensor, scale=scale_advantages),
        step=step,
        old_logprobs=None if old_logprobs is None else _float_rows(old_logprobs, response_length),
    )


def _float_rows(rows: Sequence[Sequence[float]], length: int) -> torch.Tensor:
    """[N, length] float32 from equal-length rows (ValueError naming a row of another length)."""
    for i, row in enumerate(rows):
        if len(row) != length:
            raise ValueError(f"old_logprobs row {i} has {len(row)} values, expected L={length}")
    return torch.tensor([list(r) for r in rows], dtype=torch.float32)
