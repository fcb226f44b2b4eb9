"""`Policy`: one calling convention over every masked-diffusion LM the project trains.

Whatever the checkpoint (the tiny bidirectional Llama, LLaDA, Dream), `policy(input_ids,
attention_mask)` returns an object whose `.logits[:, i]` is the prediction for token i, and the
policy knows its mask, EOS and pad ids. Differences hidden here:
- Dream is trained with shifted logits (position i-1 predicts token i): they are shifted back.
- Padding: batches are left-padded; models that take `position_ids` get positions that start at
  0 on the first real token, so a padded sequence sees exactly what it would see alone.
- LLaDA and Dream load as the native classes of dllm.models by default (our code: they honour
  the padding mask and positions and use a transformers KV cache); their official remote code is
  an explicit opt-in (`implementation="remote"`). The remote codes take the padding mask in
  different shapes, and LLaDA's ignores it.
This module does not sample (rollout/) or compute likelihoods (learner/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dllm.models import NATIVE_CLASSES, NATIVE_CONFIG_KEYS
from dllm.precision import resolve_device, resolve_dtype

# LLaDA's remote config does not always carry the mask id; its model card fixes it.
LLADA_MASK_ID = 126336
KINDS = ("llama", "llada", "dream")
IMPLEMENTATIONS = ("native", "remote")  # how LLaDA and Dream are loaded (see load_policy)
_NATIVE_TYPES = tuple(NATIVE_CLASSES.values())


@dataclass
class PolicyOutput:
    logits: torch.Tensor  # [B, T, V]; logits[:, i] predicts token i
    cache: object | None = None  # the model's KV cache object when asked for one (use_cache=True)


class Policy(nn.Module):
    """A masked-diffusion LM with aligned logits and known special-token ids."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        kind: str,
        mask_id: int,
        eos_id: int,
        pad_id: int,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown policy kind {kind!r}; expected one of {KINDS}")
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.mask_id = int(mask_id)
        self.eos_id = int(eos_id)
        self.pad_id = int(pad_id)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"Policy(kind={self.kind}, params={n / 1e6:.2f}M, mask_id={self.mask_id})"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def shifted_logits(self) -> bool:
        """True when the model's raw output at i-1 predicts token i (Dream): `forward` realigns
        it, so the aligned logit of position i needs position i-1 in the same forward (a cached
        query must start one position early; rollout/kv_cache.py does)."""
        return self.kind == "dream"

    @property
    def native(self) -> bool:
        """True for the in-repo LLaDA / Dream classes and the tiny Llama (no remote code)."""
        return self.kind == "llama" or isinstance(self.model, _NATIVE_TYPES)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **model_kwargs,
    ) -> PolicyOutput:
        """Logits aligned to positions; `attention_mask` is [B, T] with 1 on real tokens."""
        kwargs = dict(model_kwargs)
        kwargs.setdefault("use_cache", False)  # a KV cache only when the sampler asks for one
        if attention_mask is not None and bool((attention_mask == 0).any()):
            kwargs.update(self._padding_kwargs(attention_mask, kwargs))
        out = self.model(input_ids=input_ids, **kwargs)
        logits = out.logits
        if self.kind == "dream":
            # Dream's logits at i-1 predict token i; position 0 has no predecessor and keeps its own.
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        # transformers 5 names the cache `cache`; remote code (LLaDA, Dream) `past_key_values`.
        keys = out.keys() if hasattr(out, "keys") else ()
        cache = out["cache"] if "cache" in keys else out["past_key_values"] if "past_key_values" in keys else None
        return PolicyOutput(logits=logits, cache=cache)

    def _padding_kwargs(self, attention_mask: torch.Tensor, kwargs: dict) -> dict:
        mask = attention_mask.to(torch.long)
        extra: dict = {}
        # LLaDA's remote code takes no positions; every other model gets them.
        takes_positions = self.native or self.kind == "dream"
        if takes_positions and "position_ids" not in kwargs:
            extra["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.kind == "dream" and not self.native:
            # Dream's remote code expects a [B, 1, T, T] boolean mask (real query x real key).
            keep = mask.bool()
            extra["attention_mask"] = keep[:, None, :, None] & keep[:, None, None, :]
        else:
            extra["attention_mask"] = mask  # [B, keys]: the native classes and the tiny Llama
        return extra

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        """Weights (safetensors), config and tokenizer, loadable with `load_policy(path)`.
        `state_dict` replaces the model's own (a sharded model's gathered weights)."""
        path = Path(path)
        if state_dict is not None:
            state_dict = dict(state_dict)  # transformers empties the dict it is given as it writes
        self.model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)


def _read_config(name_or_path: str | Path) -> dict:
    """The checkpoint's raw config.json as a dict (local folder, or a hub name: only the config
    file is fetched, and no code is run to read it)."""
    local = Path(name_or_path)
    if local.exists():
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"{local} has no config.json: not a model checkpoint folder")
        return json.loads((local / "config.json").read_text())
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(str(name_or_path))
    return config


def _kind_of(config: dict, name: str) -> str:
    """Which diffusion LM a config describes: by model_type, then architectures, then the name."""
    model_type = str(config.get("model_type", "")).lower()
    architectures = " ".join(config.get("architectures") or []).lower()
    for kind in ("llada", "dream"):
        if kind in model_type or kind in architectures:
            return kind
    if model_type == "llama":
        return "llama"
    for kind in ("llada", "dream"):
        if kind in name.lower():
            return kind
    raise ValueError(
        f"cannot tell which diffusion LM {name!r} is (model_type={model_type!r}); "
        "supported: the tiny bidirectional llama, LLaDA, Dream"
    )


def _mask_id(model: nn.Module, tokenizer, kind: str) -> int:
    for source in (getattr(model.config, "mask_token_id", None), getattr(tokenizer, "mask_token_id", None)):
        if source is not None:
            return int(source)
    if kind == "llada":
        return LLADA_MASK_ID
    raise ValueError("the checkpoint has no mask token (neither config.mask_token_id nor tokenizer.mask_token)")


def load_policy(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = True,
    attn_implementation: str | None = None,
    implementation: str = "native",
) -> Policy:
    """Load a checkpoint folder or hub name as a `Policy`.

    `implementation` applies to LLaDA and Dream: "native" (default) builds the in-repo class of
    dllm.models from the official config.json and safetensors, no remote code run; "remote" runs
    the checkpoint's own modeling code (`trust_remote_code` must be True). `trust_remote_code`
    also governs the tokenizer (Dream's ships its own tokenizer code). `attn_implementation`
    applies to the tiny Llama and remote code; the native classes always use SDPA.
    """
    from transformers import AutoModel, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-shard progress bars in worker logs
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    raw_config = _read_config(name_or_path)
    kind = _kind_of(raw_config, str(name_or_path))
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if kind == "llama":
        model = LlamaForCausalLM.from_pretrained(str(name_or_path), dtype=torch_dtype, **extra)
        if getattr(model.config, "is_causal", True):
            raise ValueError(
                f"{name_or_path} is a causal Llama (is_causal is not False): not a diffusion LM"
            )
    elif implementation == "native":
        if attn_implementation not in (None, "sdpa"):
            raise ValueError(
                f"the native {kind} class uses SDPA only; attn_implementation={attn_implementation!r} "
                "needs implementation='remote'"
            )
        missing = [key for key in NATIVE_CONFIG_KEYS[kind] if key not in raw_config]
        if missing:
            raise ValueError(
                f"{name_or_path} is a {kind} checkpoint whose config.json lacks {missing}: not the "
                f"official {kind} config format the native class reads (implementation='remote' "
                "runs the checkpoint's own code)"
            )
        model = NATIVE_CLASSES[kind].from_pretrained(str(name_or_path), dtype=torch_dtype)
    else:
        if not trust_remote_code:
            raise ValueError("implementation='remote' runs the checkpoint's code: it needs trust_remote_code=True")
        model = AutoModel.from_pretrained(
            str(name_or_path), trust_remote_code=True, dtype=torch_dtype, **extra
        )
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"  # the project's one padding convention (see module docstring)
    mask_id = _mask_id(model, tokenizer, kind)
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    if eos_id is None:
        raise ValueError(f"{name_or_path} defines no EOS token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    policy = Policy(model, tokenizer, kind=kind, mask_id=mask_id, eos_id=eos_id, pad_id=pad_id)
    return policy.to(device=dev).eval()
