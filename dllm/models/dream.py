"""Dream, natively: the mask predictor of Dream-org/Dream-v0-*-7B without `trust_remote_code`.

Dream is Qwen2 (q/k/v with bias, RMSNorm, RoPE, SiLU-gated MLP) without the causal mask,
trained so that the output at position i-1 predicts token i. Module and parameter names follow
the official checkpoint (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`, ...,
`lm_head`), so `DreamModel.from_pretrained` reads the released safetensors and config.json as
they are, and `save_pretrained` writes the same names back.

The logits this class returns are the official ones, still shifted; `dllm.Policy` realigns
them (and rollout/kv_cache.py queries one position early for that reason). What differs from
the official remote code, on purpose: the padding mask is a 2-D [B, keys] mask (1 on real
tokens; the official code wants a ready-made 4-D one), and the KV cache is always a
transformers `Cache`. On unpadded input without a cache the logits equal the official ones
(tests/dllm/test_native_models.py). RoPE scaling, sliding windows and tied embeddings, which
the released models do not use, are refused by name.
This module does not tokenize, shift logits or sample.
"""

from __future__ import annotations

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

# Shape fields an official config.json always carries; without them the defaults would build 7B.
CONFIG_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)


class DreamConfig(PretrainedConfig):
    """The official Dream config.json fields this class reads (others are kept, unused)."""

    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int | None = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 131072,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 1000000.0,
        rope_scaling: dict | None = None,
        use_sliding_window: bool = False,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        mask_token_id: int = 151666,
        pad_token_id: int = 151643,
        tie_word_embeddings: bool = False,
        use_cache: bool = False,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        if (
            rope_scaling is not None
            and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default"
        ):
            # Not stored: transformers 5 deprecates the attribute, and only plain RoPE is built.
            raise ValueError(
                f"native Dream supports plain RoPE only; the config has rope_scaling={rope_scaling!r}"
            )
        self.use_sliding_window = use_sliding_window
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs
        )

    def check_supported(self) -> None:
        unsupported = {
            "use_sliding_window": bool(self.use_sliding_window),
            "tie_word_embeddings": bool(self.tie_word_embeddings),
            "hidden_act": self.hidden_act != "silu",
        }
        for key, bad in unsupported.items():
            if bad:
                raise ValueError(
                    f"native Dream does not support {key}={getattr(self, key)!r} (the released "
                    "models do not use it). Load it with implementation='remote' instead."
                )
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        if self.hidden_size % heads or heads % kv:
            raise ValueError(
                f"hidden_size {self.hidden_size}, heads {heads}, kv heads {kv} do not divide"
            )


class DreamAttention(nn.Module):
    """Bidirectional grouped-query attention with Qwen2's biases (q, k, v yes; o no)."""

    def __init__(self, config: DreamConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.rope_theta = config.rope_theta
        self.attention_dropout = config.attention_dropout
        d, kv = config.hidden_size, self.kv_heads * self.head_dim
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, kv, bias=True)
        self.v_proj = nn.Linear(d, kv, bias=True)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)

    def forward(self, x, position_ids, key_mask, cache: Cache | None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, k, position_ids, self.rope_theta, full_precision=False)
        if cache is not None:  # keys are stored rotated: their positions travel with them
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.attention_dropout if self.training else 0.0
        return self.o_proj(attend(q, k, v, key_mask, dropout))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        d, ff = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    """x + Attn(RMSNorm(x)), then + MLP(RMSNorm(.))."""

    def __init__(self, config: DreamConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = DreamAttention(config, layer_idx)
        self.mlp = DreamMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, position_ids, key_mask, cache) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), position_ids, key_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBaseModel(nn.Module):
    """Embeddings, layers and the final norm, under the official `model.*` names."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        # padding_idx as in the official model: the pad row's embedding gets no gradient.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            DreamDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids, position_ids, key_mask, cache) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, position_ids, key_mask, cache)
        return self.norm(x)


class DreamModel(PreTrainedModel):
    """Dream with the transformers loading machinery; logits[:, i] predicts token i + 1."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]  # one FSDP unit per layer (learner/sharding.py)
    supports_gradient_checkpointing = False

    def __init__(self, config: DreamConfig) -> None:
        config.check_supported()
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

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
            raise TypeError(f"DreamModel.forward got unsupported arguments {sorted(kwargs)}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = default_position_ids(past, length, batch, input_ids.device)
        # Built once per forward (it checks the mask on the host), shared by every layer.
        key_mask = key_padding_mask(attention_mask, batch, past + length)
        logits = self.lm_head(self.model(input_ids, position_ids, key_mask, cache))
        return CausalLMOutputWithPast(logits=logits, cache=cache if use_cache else None)
