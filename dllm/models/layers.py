"""Building blocks shared by the native LLaDA and Dream classes: RoPE, padding mask, attention.

Both models are Llama-family transformers without the causal mask. What they share is written
once here: rotary embeddings computed from explicit `position_ids` (so a left-padded row gets
the positions it would get alone), a key-padding mask built from a 2-D `attention_mask`, and
bidirectional scaled-dot-product attention over the transformers `Cache` (DynamicCache) the
rollout's prefix and dual caches drive (rollout/kv_cache.py). RMSNorm is transformers'
`LlamaRMSNorm`, which computes exactly what both official models compute.
This module holds no weights of its own and knows nothing about checkpoints or weight names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

__all__ = [
    "LlamaRMSNorm",
    "apply_rope",
    "attend",
    "default_position_ids",
    "key_padding_mask",
    "rotary_cos_sin",
]


def default_position_ids(past_length: int, query_length: int, batch: int, device) -> torch.Tensor:
    """Positions [B, Q] of a query that follows `past_length` cached tokens (no padding)."""
    pos = torch.arange(past_length, past_length + query_length, device=device)
    return pos.unsqueeze(0).expand(batch, -1)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables [B, Q, head_dim] for the given positions, computed in float32.

    Frequencies 1 / theta^(2i / d), duplicated over the two halves of the head (the
    `rotate_half` layout both official models use). Nothing is cached: the table is
    head_dim/2 x Q multiplications, negligible next to attention, and it keeps the modules free
    of buffers that meta-device loading would have to re-create.
    """
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.int64).float()
    inv_freq = 1.0 / (theta ** (exponent / head_dim))
    with torch.autocast(device_type=position_ids.device.type, enabled=False):
        freqs = position_ids.float()[..., None] * inv_freq  # [B, Q, head_dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    position_ids: torch.Tensor,
    theta: float,
    *,
    full_precision: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [B, H, Q, D] and k [B, H_kv, Q, D] to their positions [B, Q].

    `full_precision`: rotate in float32 and cast back (LLaDA's `rope_full_precision`); otherwise
    in the activations' dtype with float32 tables cast down (Dream, as Qwen2 does).
    """
    head_dim = q.shape[-1]
    if full_precision:
        cos, sin = rotary_cos_sin(position_ids, head_dim, theta, torch.float32)
        q_rot, k_rot = apply_rotary_pos_emb(q.float(), k.float(), cos, sin)
        return q_rot.to(q.dtype), k_rot.to(k.dtype)
    cos, sin = rotary_cos_sin(position_ids, head_dim, theta, q.dtype)
    return apply_rotary_pos_emb(q, k, cos, sin)


def key_padding_mask(
    attention_mask: torch.Tensor | None, batch: int, key_length: int
) -> torch.Tensor | None:
    """A boolean [B, 1, 1, K] mask (True = attend) from a [B, K] 0/1 mask over all keys.

    The keys are the cached ones followed by the query's own, so the mask covers both. None
    when nothing is hidden (the fast path of SDPA). A row with no real key at all (a ghost row
    of a sharded learner batch) attends to everything instead of producing NaNs; its outputs
    are never used.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, key_length):
        raise ValueError(
            f"attention_mask must be [batch, keys] = [{batch}, {key_length}] "
            f"(cached + new tokens); got {tuple(attention_mask.shape)}"
        )
    keep = attention_mask.to(torch.bool)
    if bool(keep.all()):
        return None
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    return keep[:, None, None, :]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Bidirectional attention: q [B, H, Q, D], k/v [B, H_kv, K, D] -> [B, Q, H * D].

    Grouped-query heads are repeated the way both official models do (`repeat_interleave`: key
    head j serves query heads j*r ... j*r + r - 1).
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        if heads % kv_heads:
            raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key heads")
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=False
    )
    batch, _, length, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)
