"""The model call of one denoising step: full forward, or Fast-dLLM prefix / dual KV cache.

Each strategy returns the logits of the current block only ([B, block_length, V]) and counts its
forwards. The caches are approximate (bgpo.md section 7, "Accelerations"): with bidirectional
attention every position's keys and values depend on the whole sequence, so K/V cached at the first
step of a block go stale as tokens are committed inside the block. The first step of every block is
a full forward (exact) that refreshes the cache.
- prefix: cache K/V of everything before the block; query the block and all later positions.
- dual: cache K/V of everything outside the block (prefix and suffix); query the block only.
The caches use the model's own transformers `Cache` (`DynamicCache`): the prefix cache is cropped
back after every step; the dual cache stores prefix and suffix side by side and the block's fresh
K/V are appended after them. Attention is a sum over keys, so the key order does not matter once
RoPE has been applied (positions travel in `position_ids`; the padding mask is permuted the same
way). Models whose cache is not a transformers `Cache` (LLaDA's remote code returns tuples) are
refused with an error rather than run without a cache.

Shifted models (Dream: the raw output at i-1 predicts token i; `Policy.shifted_logits`): the
aligned logit of the block's first position comes from the position before the block, so cached
queries start one position early (that position's K/V are recomputed, not read from the cache)
and its own output is dropped. Without that, the first token of every block would be predicted
from the wrong hidden state in every cached step.
This module does not choose tokens.
"""

from __future__ import annotations

import inspect

import torch

CACHE_ARG_NAMES = ("cache", "past_key_values")  # transformers 5 / remote code and older versions


def _logits(out) -> torch.Tensor:
    return out.logits


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_argument_name(model) -> str:
    """The keyword the model (or the HF model inside a `Policy`) takes its KV cache by."""
    for target in (model, getattr(model, "model", None)):
        forward = getattr(target, "forward", None)
        if forward is None:
            continue
        params = inspect.signature(forward).parameters
        for name in CACHE_ARG_NAMES:
            if name in params:
                return name
    raise ValueError(f"{type(model).__name__} takes no KV cache argument ({CACHE_ARG_NAMES})")


def _lead(model, start: int) -> int:
    """How many positions before the block a cached query must start at: 1 for a shifted model
    (Dream), so the block's first aligned logit is computed; 0 otherwise (or at position 0)."""
    return 1 if getattr(model, "shifted_logits", False) and start > 0 else 0


def _padding_or_none(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Pass a mask only where it hides something (an all-ones mask is a no-op; skip the work)."""
    if mask is None or bool(mask.all()):
        return None
    return mask


class BlockForward:
    """Uncached: one forward over the whole sequence per step (LLaDA's reference)."""

    def __init__(
        self, model, attention_mask: torch.Tensor | None, position_ids: torch.Tensor
    ) -> None:
        self.model = model
        self.attention_mask = _padding_or_none(attention_mask)
        self.position_ids = position_ids
        self.nfe = 0
        self.full_forwards = 0

    def _full(self, x: torch.Tensor, **kwargs):
        self.nfe += 1
        self.full_forwards += 1
        if self.attention_mask is None and not kwargs:
            return self.model(x)  # the bare call of LLaDA's generate: any mask predictor works
        return self.model(x, attention_mask=self.attention_mask, **kwargs)

    def __call__(self, x: torch.Tensor, start: int, end: int, first_step: bool) -> torch.Tensor:
        """Logits [B, end - start, V] of the block x[:, start:end]."""
        return _logits(self._full(x))[:, start:end]


class PrefixCacheForward(BlockForward):
    """Fast-dLLM prefix cache: K/V of x[:, :start] from the block's first (full) forward
    (x[:, :start - 1] for a shifted model, whose query starts at start - 1)."""

    def __init__(self, model, attention_mask, position_ids) -> None:
        super().__init__(model, attention_mask, position_ids)
        self.cache_arg = cache_argument_name(model)
        self.full_mask = attention_mask  # kept whole: keys = cached prefix + queried suffix
        self.cache = None

    def _refresh(self, x: torch.Tensor):
        out = self._full(x, position_ids=self.position_ids, use_cache=True)
        cache = _cache_of(out)
        if cache is None or not hasattr(cache, "crop") or not hasattr(cache, "get_seq_length"):
            raise ValueError(
                f"cache mode needs a transformers Cache from the model; got {type(cache).__name__}"
            )
        return out, cache

    def __call__(self, x, start, end, first_step):
        lead = _lead(self.model, start)
        first = start - lead  # the first queried position
        if first_step or self.cache is None:
            out, self.cache = self._refresh(x)
            self.cache.crop(first - self.cache.get_seq_length())  # keep positions [0, first)
            return _logits(out)[:, start:end]
        self.nfe += 1
        out = self.model(
            x[:, first:],
            attention_mask=_padding_or_none(self.full_mask),
            position_ids=self.position_ids[:, first:],
            use_cache=True,
            **{self.cache_arg: self.cache},
        )
        self.cache.crop(first - self.cache.get_seq_length())  # drop the K/V this query appended
        return _logits(out)[:, lead : lead + end - start]


class DualCacheForward(PrefixCacheForward):
    """Fast-dLLM dual cache: K/V of everything outside x[:, start:end]; only the block is queried."""

    def __init__(self, model, attention_mask, position_ids) -> None:
        super().__init__(model, attention_mask, position_ids)
        self.block_mask: torch.Tensor | None = None

    def _outside_block(self, cache, start: int, end: int):
        """A new cache of the same class holding K/V of [0, start) followed by [end, T)."""
        rebuilt = type(cache)()
        for idx, layer in enumerate(cache.layers):
            keys = torch.cat([layer.keys[:, :, :start], layer.keys[:, :, end:]], dim=2)
            values = torch.cat([layer.values[:, :, :start], layer.values[:, :, end:]], dim=2)
            rebuilt.update(keys, values, idx)
        return rebuilt

    def __call__(self, x, start, end, first_step):
        lead = _lead(self.model, start)
        first = start - lead  # the first queried position: the block, or one before it
        if first_step or self.cache is None:
            out, cache = self._refresh(x)
            self.cache = self._outside_block(cache, first, end)
            if self.full_mask is not None:
                m = self.full_mask
                # Keys are ordered [prefix, suffix, queried] from here on; the mask follows.
                self.block_mask = torch.cat([m[:, :first], m[:, end:], m[:, first:end]], dim=1)
            return _logits(out)[:, start:end]
        self.nfe += 1
        out = self.model(
            x[:, first:end],
            attention_mask=_padding_or_none(self.block_mask),
            position_ids=self.position_ids[:, first:end],
            use_cache=True,
            **{self.cache_arg: self.cache},
        )
        self.cache.crop(first - end)  # drop the K/V this query appended
        return _logits(out)[:, lead:]


def make_block_forward(
    mode: str, model, attention_mask: torch.Tensor | None, position_ids: torch.Tensor
) -> BlockForward:
    """The strategy for `SamplingConfig.cache` ('none', 'prefix' or 'dual')."""
    classes = {"none": BlockForward, "prefix": PrefixCacheForward, "dual": DualCacheForward}
    if mode not in classes:
        raise ValueError(f"unknown cache mode {mode!r}; expected one of {tuple(classes)}")
    return classes[mode](model, attention_mask, position_ids)
