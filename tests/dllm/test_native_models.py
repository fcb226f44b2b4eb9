"""The native LLaDA and Dream classes against their official modeling code, and in the sampler.

The fixture (tests/fixtures/native_models/, see its README) holds tiny random checkpoints in the
official format (config.json, safetensors under the official weight names) and the logits the
official code computed for them. Here:
- the native classes load those files as they are and reproduce the official logits;
- a left-padded row computes what the same row computes alone (the official LLaDA code cannot);
- cached and uncached logits agree wherever the caches are exact, at every position of the block,
  Dream's first position included (rollout/kv_cache.py queries one position early for it);
- their no-split blocks are what FSDP wraps.
"""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dllm import build_char_tokenizer, load_policy
from dllm.models import DreamModel, LLaDAModelLM
from rollout import generate
from rollout.kv_cache import make_block_forward
from rollout.sampler import _initial_canvas

FIXTURES = Path(__file__).parent.parent / "fixtures" / "native_models"
CLASSES = {"llada": LLaDAModelLM, "dream": DreamModel}
KINDS = sorted(CLASSES)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread on the shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reference(kind: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / kind / "reference.safetensors"))


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """kind -> Policy loaded by `load_policy` (native by default) from the fixture plus a tokenizer."""
    loaded = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(FIXTURES / kind / name, folder / name)
        build_char_tokenizer().save_pretrained(folder)  # 101 ids, inside the fixture's 128
        loaded[kind] = load_policy(folder, device="cpu", dtype="fp32")
    return loaded


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_native_class_reproduces_the_official_logits(kind):
    model = CLASSES[kind].from_pretrained(FIXTURES / kind, dtype=torch.float32).eval()
    ref = _reference(kind)
    logits = model(ref["input_ids"]).logits
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-5)


@torch.no_grad()
def test_native_dream_reproduces_the_official_padded_logits():
    # The official Dream honours a 4-D mask and position ids; the native class gets the 2-D mask.
    model = DreamModel.from_pretrained(FIXTURES / "dream", dtype=torch.float32).eval()
    ref = _reference("dream")
    mask = ref["padded_attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(ref["padded_input_ids"], attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref["padded_logits"][real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_load_policy_picks_the_native_class_and_keeps_the_weight_names(policies, kind, tmp_path):
    policy = policies[kind]
    assert isinstance(policy.model, CLASSES[kind]) and policy.native and policy.kind == kind
    assert policy.mask_id == 1  # config.mask_token_id of the fixture
    official = set(load_file(str(FIXTURES / kind / "model.safetensors")))
    assert set(policy.model.state_dict()) == official
    policy.save_pretrained(tmp_path)
    assert set(load_file(str(tmp_path / "model.safetensors"))) == official
    again = load_policy(tmp_path, device="cpu", dtype="fp32")
    x = _reference(kind)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, policy(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_left_padded_row_equals_the_row_alone(policies, kind):
    policy = policies[kind]
    x = _reference(kind)["input_ids"]
    pad = torch.full((1, 5), policy.pad_id)
    batch = torch.cat([torch.cat([x[:1, :5], x[:1]], dim=1), torch.cat([pad, x[1:]], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    padded = policy(batch, attention_mask=mask).logits
    alone = policy(x[1:]).logits
    # Dream's aligned position 0 has no predecessor and is excluded by convention (dllm.policy).
    first = 1 if policy.shifted_logits else 0
    torch.testing.assert_close(padded[1:, 5 + first :], alone[:, first:], rtol=1e-5, atol=1e-5)


def _canvas(policy, lengths, gen_length):
    """Left-padded prompts of the given lengths with some committed tokens in the response."""
    gen = torch.Generator().manual_seed(3)
    width = max(lengths)
    ids = torch.full((len(lengths), width), policy.pad_id)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = torch.randint(4, 100, (n,), generator=gen)
        mask[i, width - n :] = 1
    x, full_mask, pos = _initial_canvas(ids, mask, gen_length, policy.mask_id)
    x[:, width : width + 4] = torch.randint(4, 100, (len(lengths), 4), generator=gen)
    return x, full_mask, pos, width


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@torch.no_grad()
def test_cached_step_after_a_refresh_equals_the_full_forward_at_every_position(policies, kind, mode):
    # Right after the refresh the canvas is unchanged, so the cached K/V are exact and every
    # position of the block, the first included (Dream's shifted logit), must agree.
    policy = policies[kind]
    x, mask, pos, plen = _canvas(policy, [7, 12], gen_length=24)
    for start in (plen, plen + 8):  # the first block (right after the prompt) and a later one
        end = start + 8
        full = make_block_forward("none", policy, mask, pos)(x, start, end, first_step=True)
        cached = make_block_forward(mode, policy, mask, pos)
        refreshed = cached(x, start, end, first_step=True)
        served = cached(x, start, end, first_step=False)
        torch.testing.assert_close(refreshed, full, rtol=0, atol=0)
        delta = (served - full).abs().amax(dim=(0, 2))  # per block position
        assert delta.max().item() < 1e-5, f"{mode} cache, block at {start}: max |delta| per position {delta.tolist()}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_sampling_equals_uncached_with_one_step_per_block(policies, kind, mode):
    # One step per block: every step is a block's refresh, where the caches are exact.
    policy = policies[kind]
    gen = torch.Generator().manual_seed(8)
    prompts = [torch.randint(4, 100, (n,), generator=gen) for n in (5, 9)]
    ids = torch.full((2, 9), policy.pad_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, 9 - len(p) :], mask[i, 9 - len(p) :] = p, 1
    opts = dict(gen_length=24, steps=3, block_length=8, mask_id=policy.mask_id, attention_mask=mask)
    assert torch.equal(generate(policy, ids, cache=mode, **opts), generate(policy, ids, **opts))


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp_wraps_the_native_blocks(policies, kind):
    from learner.sharding import block_classes

    expected = {"llada": {"LLaDABlock"}, "dream": {"DreamDecoderLayer"}}[kind]
    assert block_classes(policies[kind].model) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_weight_and_a_ghost_row_stays_finite(kind):
    # A sharded learner pads its batch with all-padding ghost rows: no NaN may come out of them.
    model = CLASSES[kind].from_pretrained(FIXTURES / kind, dtype=torch.float32).train()
    x = _reference(kind)["input_ids"]
    mask = torch.ones_like(x)
    mask[1] = 0
    logits = model(x, attention_mask=mask).logits
    assert bool(torch.isfinite(logits).all())
    logits[0].logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [], missing


def test_unsupported_official_switches_are_refused():
    from dllm.models import LLaDAConfig

    config = LLaDAConfig(d_model=32, n_heads=4, n_layers=1, vocab_size=64, block_type="sequential")
    with pytest.raises(ValueError, match="block_type"):
        LLaDAModelLM(config)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_native_llada_padding_on_cuda_in_bf16():
    model = LLaDAModelLM.from_pretrained(FIXTURES / "llada", dtype=torch.bfloat16).to("cuda").eval()
    x = _reference("llada")["input_ids"].to("cuda")
    batch = torch.cat([x[:1], torch.cat([torch.zeros_like(x[1:, :5]), x[1:, 5:]], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = model(batch, attention_mask=mask, position_ids=pos).logits.float()
    ignored = model(batch).logits.float()  # what the official code computes (mask dropped)
    alone = model(x[1:, 5:]).logits.float()
    # bf16 steps are 2^-5 at |logit| in [4, 8): allow two of them. Attending to the pads instead
    # moves the logits by about 5 (on CPU, in bf16 and fp32), far outside that.
    torch.testing.assert_close(padded[1:, 5:], alone, rtol=0, atol=6.25e-2)
    assert (ignored[1:, 5:] - alone).abs().max().item() > 1.0
    fp32 = LLaDAModelLM.from_pretrained(FIXTURES / "llada", dtype=torch.float32).eval()
    reference = fp32(x[1:, 5:].cpu()).logits
    torch.testing.assert_close(alone.cpu(), reference, rtol=0, atol=0.15)  # CPU bf16: 0.084
