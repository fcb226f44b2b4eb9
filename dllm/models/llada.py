"""LLaDA, natively: the mask predictor of GSAI-ML/LLaDA-8B-* without `trust_remote_code`.

A Llama-style transformer without the causal mask (LLaDA's "llama" block: RMSNorm, RoPE,
SiLU-gated MLP). Module and parameter names follow the official checkpoint
(`model.transformer.wte`, `model.transformer.blocks.N.q_proj`, ..., `model.transformer.ff_out`),
so `LLaDAModelLM.from_pretrained` reads the released safetensors and its official config.json
as they are, and `save_pretrained` writes the same names back.

What differs from the official remote code, on purpose:
- the `attention_mask` ([B, keys], 1 on real tokens) is honoured (the official code builds a
  bias from it and then calls attention without it), and `position_ids` are taken, so a
  left-padded row computes what it would compute alone;
- the KV cache is a transformers `Cache` (DynamicCache) updated per layer, the contract of the
  rollout's prefix / dual caches, instead of a list of tuples.
On unpadded input without a cache the logits equal the official ones (tests/dllm/test_native_models.py,
against logits produced by the official code). Only the configuration family LLaDA was released
with is built; other values of the official config's switches (ALiBi, sequential blocks,
LayerNorm, q/k norms, ...) are refused by name rather than computed differently.
This module does not tokenize, shift logits or sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from dllm.models.layers import (
    LlamaRMSNorm,
    apply_rope,
    attend,
    default_position_ids,
    key_padding_mask,
)

# The official config's switches and the only values built here (LLaDA-8B-Base/Instruct's).
_REQUIRED = {
    "block_type": "llama",
    "layer_norm_type": "rms",
    "activation_type": "silu",
    "alibi": False,
    "rope": True,
    "attention_layer_norm": False,
    "block_group_size": 1,
    "input_emb_norm": False,
    "layer_norm_with_affine": True,
    "include_bias": False,
}


# Shape fields an official config.json always carries; without them the defaults would build 8B.
CONFIG_KEYS = ("d_model", "n_heads", "n_layers", "vocab_size")


class LLaDAConfig(PretrainedConfig):
    """The official LLaDA config.json fields this class reads (others are kept, unused)."""

    model_type = "llada"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
    }

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_hidden_size: int | None = 12288,
        mlp_ratio: int = 4,
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 500000.0,
        rope_full_precision: bool = True,
        include_qkv_bias: bool = False,
        weight_tying: bool = False,
        scale_logits: bool = False,
        attention_dropout: float = 0.0,
        max_sequence_length: int = 4096,
        mask_token_id: int | None = None,  # absent from some official configs: see dllm.policy
        use_cache: bool = False,
        **kwargs,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.mlp_ratio = mlp_ratio
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.rope_full_precision = rope_full_precision
        self.include_qkv_bias = include_qkv_bias
        self.weight_tying = weight_tying
        self.scale_logits = scale_logits
        self.attention_dropout = attention_dropout
        self.max_sequence_length = max_sequence_length
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        for key, value in _REQUIRED.items():
            kwargs.setdefault(key, value)
        # LLaDA's own flag is `weight_tying` (the forward reads wte directly); transformers' tying
        # machinery must not act on its default tie_word_embeddings=True.
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_size(self) -> int:
        return self.mlp_hidden_size or self.mlp_ratio * self.d_model

    def check_supported(self) -> None:
        for key, wanted in _REQUIRED.items():
            value = getattr(self, key, wanted)
            value = getattr(value, "value", value)  # tolerate enum-valued configs
            if value != wanted:
                raise ValueError(
                    f"native LLaDA supports {key}={wanted!r} only (the released models'); the "
                    f"config has {value!r}. Load it with implementation='remote' instead."
                )
        if self.d_model % self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(
                f"d_model {self.d_model}, n_heads {self.n_heads}, n_kv_heads {self.kv_heads} do not divide"
            )


class LLaDABlock(nn.Module):
    """One transformer block: x + Attn(RMSNorm(x)), then + MLP(RMSNorm(.)) (LLaDA's llama block)."""

    def __init__(self, config: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.kv_heads = config.n_heads, config.kv_heads
        self.head_dim = config.d_model // config.n_heads
        self.rope_theta = config.rope_theta
        self.full_precision_rope = bool(config.rope_full_precision)
        self.attention_dropout = config.attention_dropout
        d, kv, qkv_bias = config.d_model, config.kv_heads * self.head_dim, config.include_qkv_bias
        self.attn_norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.ff_norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, config.ff_size, bias=False)  # gate (SiLU)
        self.up_proj = nn.Linear(d, config.ff_size, bias=False)
        self.ff_out = nn.Linear(config.ff_size, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        key_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(
            q, k, position_ids, self.rope_theta, full_precision=self.full_precision_rope
        )
        if cache is not None:  # keys are stored rotated: their positions travel with them
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.attention_dropout if self.training else 0.0
        x = x + self.attn_out(attend(q, k, v, key_mask, dropout))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDAModel(nn.Module):
    """Embeddings, blocks, final norm and output head, under the official `transformer.*` names."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        vocab = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, config.d_model),
                "blocks": nn.ModuleList(LLaDABlock(config, i) for i in range(config.n_layers)),
                "ln_f": LlamaRMSNorm(config.d_model, eps=config.rms_norm_eps),
            }
        )
        if not config.weight_tying:
            self.transformer["ff_out"] = nn.Linear(config.d_model, vocab, bias=False)

    def forward(self, input_ids, position_ids, key_mask, cache) -> torch.Tensor:
        x = self.transformer["wte"](input_ids)
        for block in self.transformer["blocks"]:
            x = block(x, position_ids, key_mask, cache)
        x = self.transformer["ln_f"](x)
        if self.config.weight_tying:
            logits = F.linear(x, self.transformer["wte"].weight)
        else:
            logits = self.transformer["ff_out"](x)
        if self.config.scale_logits:
            logits = logits * (1 / math.sqrt(self.config.d_model))
        return logits


class LLaDAModelLM(PreTrainedModel):
    """LLaDA with the transformers loading machinery; logits[:, i] predicts token i."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]  # one FSDP unit per block (learner/sharding.py)
    supports_gradient_checkpointing = False

    def __init__(self, config: LLaDAConfig) -> None:
        config.check_supported()
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer["wte"]

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`attention_mask` [B, cached + new] with 1 on real tokens; `position_ids` [B, new]."""
        if kwargs:
            raise TypeError(f"LLaDAModelLM.forward got unsupported arguments {sorted(kwargs)}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = default_position_ids(past, length, batch, input_ids.device)
        # Built once per forward (it checks the mask on the host), shared by every layer.
        key_mask = key_padding_mask(attention_mask, batch, past + length)
        logits = self.model(input_ids, position_ids, key_mask, cache)
        return CausalLMOutputWithPast(logits=logits, cache=cache if use_cache else None)
