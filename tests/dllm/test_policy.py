"""The model layer: tiny model round trip, padding, and the remote-code loading path (offline).

The stand-in remote code is loaded with implementation="remote" (the native classes, the default,
are tested in test_native_models.py)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dllm import build_char_tokenizer, build_tiny_policy, load_policy
from dllm.weights import load_buckets_into, pack_bucket, plan_buckets, to_numpy

FIXTURES = Path(__file__).parent.parent / "fixtures" / "remote_models"


def test_tiny_model_is_bidirectional():
    policy = build_tiny_policy(seed=0)
    x = torch.randint(5, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, -1] = 5 + (y[0, -1] - 5 + 1) % 95  # another ordinary id, still inside the 101-token vocab
    with torch.no_grad():
        first_a = policy(x).logits[0, 0]
        first_b = policy(y).logits[0, 0]
    # A change at the last position reaches the first one only without a causal mask.
    assert (first_a - first_b).abs().max() > 1e-4


def test_tiny_round_trip(tmp_path):
    policy = build_tiny_policy(seed=3)
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = load_policy(tmp_path, device="cpu", dtype="fp32")
    assert loaded.kind == "llama"
    assert (loaded.mask_id, loaded.eos_id, loaded.pad_id) == (policy.mask_id, policy.eos_id, policy.pad_id)
    assert loaded.tokenizer.padding_side == "left"
    x = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(policy(x).logits, loaded(x).logits, rtol=0, atol=0)


def test_left_padding_gives_the_same_logits():
    policy = build_tiny_policy(seed=1)
    x = torch.randint(5, 100, (1, 10))
    padded = torch.cat([torch.full((1, 4), policy.pad_id), x], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = policy(x).logits
        batched = policy(padded, attention_mask=mask).logits[:, 4:]
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-5)


def test_char_tokenizer_round_trip():
    tok = build_char_tokenizer()
    text = "4 1 . 3\n12+7=19 <answer>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("[MASK]") == tok.mask_token_id


def test_load_rejects_a_causal_llama(tmp_path):
    policy = build_tiny_policy()
    policy.model.config.is_causal = True
    policy.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="causal"):
        load_policy(tmp_path, device="cpu")


def test_load_rejects_a_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(tmp_path, device="cpu")


def _remote_checkpoint(path: Path, model_type: str, shift: bool, mask_token_id: int | None) -> Path:
    """A local folder laid out like LLaDA's or Dream's hub repo: config with auto_map + code + tokenizer."""
    from transformers import AutoConfig, AutoModel  # noqa: F401  (registers nothing; used via auto_map)

    path.mkdir()
    shutil.copy(FIXTURES / "modeling_standin.py", path / "modeling_standin.py")
    tok = build_char_tokenizer()
    tok.save_pretrained(path)
    config = {
        "model_type": model_type,
        "architectures": ["StandInModel"],
        "auto_map": {
            "AutoConfig": "modeling_standin.StandInConfig",
            "AutoModel": "modeling_standin.StandInModel",
        },
        "vocab_size": len(tok),
        "shift": shift,
        "eos_token_id": tok.eos_token_id,
    }
    if mask_token_id is not None:
        config["mask_token_id"] = mask_token_id
    (path / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file({"scale": torch.tensor(10.0)}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("model_type,shift,kind", [("llada", False, "llada"), ("Dream", True, "dream")])
def test_remote_code_models_load_with_aligned_logits(tmp_path, model_type, shift, kind):
    ckpt = _remote_checkpoint(tmp_path / model_type, model_type, shift, mask_token_id=77)
    policy = load_policy(ckpt, device="cpu", dtype="fp32", implementation="remote")
    assert policy.kind == kind
    assert policy.mask_id == 77  # read from config.mask_token_id, not hard-coded
    x = torch.randint(5, 100, (2, 8))
    with torch.no_grad():
        pred = policy(x).logits.argmax(-1)
    # After alignment every kind predicts token i at position i (Dream's position 0 has no
    # predecessor and repeats its own output, so it is excluded).
    assert torch.equal(pred[:, 1:], x[:, 1:])


def test_dream_gets_a_4d_padding_mask_and_positions(tmp_path):
    ckpt = _remote_checkpoint(tmp_path / "dream", "Dream", True, mask_token_id=77)
    policy = load_policy(ckpt, device="cpu", dtype="fp32", implementation="remote")
    x = torch.randint(5, 100, (1, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    policy(x, attention_mask=mask)
    seen = policy.model.last_attention_mask
    assert seen.shape == (1, 1, 6, 6) and seen.dtype == torch.bool
    assert not seen[0, 0, 3, 0] and seen[0, 0, 3, 2]
    assert policy.model.last_position_ids.tolist() == [[0, 0, 0, 1, 2, 3]]


@pytest.mark.parametrize("model_type", ["llada", "Dream"])
def test_native_default_refuses_a_config_it_cannot_read(tmp_path, model_type):
    # The stand-in's config has none of the official shape fields: the native class must not
    # fall back to its defaults (an 8B / 7B model), and says how to load it instead.
    ckpt = _remote_checkpoint(tmp_path / model_type, model_type, False, mask_token_id=77)
    with pytest.raises(ValueError, match="implementation='remote'"):
        load_policy(ckpt, device="cpu", dtype="fp32")


def test_remote_needs_trust_remote_code(tmp_path):
    ckpt = _remote_checkpoint(tmp_path / "llada", "llada", False, mask_token_id=77)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_policy(ckpt, device="cpu", implementation="remote", trust_remote_code=False)


def test_llada_mask_id_falls_back_to_the_model_card_value(tmp_path):
    ckpt = _remote_checkpoint(tmp_path / "llada", "llada", False, mask_token_id=None)
    policy = load_policy(ckpt, device="cpu", dtype="fp32", implementation="remote")
    # The char tokenizer defines [MASK], and the tokenizer wins over the constant.
    assert policy.mask_id == policy.tokenizer.mask_token_id


def test_weight_buckets_round_trip_through_numpy():
    src, dst = build_tiny_policy(seed=0), build_tiny_policy(seed=1)
    state = src.state_dict()
    buckets = plan_buckets(state.items(), bucket_bytes=1 << 19)
    assert len(buckets) > 1
    flats = [to_numpy(pack_bucket(b, state)) for b in buckets]
    assert all(isinstance(f, np.ndarray) for f in flats)
    load_buckets_into(dst, buckets, flats)
    for name, value in dst.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_weight_buckets_refuse_a_partial_update_without_touching_weights():
    src, dst = build_tiny_policy(seed=0), build_tiny_policy(seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    state = src.state_dict()
    buckets = plan_buckets(state.items(), bucket_bytes=1 << 19)
    flats = [pack_bucket(b, state) for b in buckets]
    with pytest.raises(KeyError, match="missing"):
        load_buckets_into(dst, buckets[:-1], flats[:-1])
    for name, value in dst.state_dict().items():
        assert torch.equal(value, before[name]), name
