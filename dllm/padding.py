"""Left padding, the project's one padding convention (rollout prompts and learner rows alike).

Rows are right-aligned so that a response always occupies the last positions; the attention mask
is 1 on real tokens. Models are told the positions of a padded row by dllm.Policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows -> (ids [B, W], attention_mask [B, W]), left-padded to the longest row."""
    if not rows:
        raise ValueError("nothing to pad: no rows")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"row {i} is empty")
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask
