"""Fast-dLLM caches on the tiny model: exact where they must be, agreement reported elsewhere.

Exact: a cached query on an unchanged canvas reproduces the full forward (same K/V), and so does a
run with one step per block (every step is a block's first, full forward). Elsewhere the caches are
approximate by design (bidirectional K/V go stale within a block); the agreement with the uncached
sampler is printed (pytest -s) and only held to a sane floor. A shifted model (native Dream) must
also be exact at the block's first position, whose logit comes from the position before the block.
"""

import pytest
import torch

from dllm.padding import left_pad
from rollout import generate, generate_with_stats
from rollout.kv_cache import make_block_forward
from rollout.sampler import _initial_canvas


def _canvas(policy, lengths, gen_length):
    gen = torch.Generator().manual_seed(4)
    seqs = [torch.randint(5, 100, (n,), generator=gen).tolist() for n in lengths]
    ids, mask = left_pad(seqs, policy.pad_id)
    x, full_mask, pos = _initial_canvas(ids, mask, gen_length, policy.mask_id)
    x[:, ids.shape[1] : ids.shape[1] + 5] = torch.randint(5, 100, (len(lengths), 5), generator=gen)
    return x, full_mask, pos, ids.shape[1]


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@torch.no_grad()
def test_cached_query_matches_full_forward_on_unchanged_canvas(policy, mode):
    x, mask, pos, plen = _canvas(policy, [6, 11], gen_length=24)
    start, end = plen + 8, plen + 16
    full = make_block_forward("none", policy, mask, pos)(x, start, end, first_step=True)
    cached = make_block_forward(mode, policy, mask, pos)
    first = cached(x, start, end, first_step=True)
    again = cached(x, start, end, first_step=False)  # served from the cache
    torch.testing.assert_close(first, full)
    torch.testing.assert_close(again, full, atol=1e-5, rtol=1e-5)
    assert cached.nfe == 2 and cached.full_forwards == 1


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_one_step_per_block_is_exact(policy, prompts, mode):
    opts = dict(gen_length=32, steps=4, block_length=8, mask_id=policy.mask_id)
    assert torch.equal(
        generate(policy, prompts, cache=mode, **opts), generate(policy, prompts, **opts)
    )


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.1])
def test_cache_agreement_with_reference(policy, prompts, mode, threshold):
    opts = dict(gen_length=64, steps=64, block_length=16, mask_id=policy.mask_id)
    ref, ref_stats = generate_with_stats(policy, prompts, **opts)
    out, stats = generate_with_stats(policy, prompts, cache=mode, threshold=threshold, **opts)
    plen = prompts.shape[1]
    agree = (out[:, plen:] == ref[:, plen:]).double().mean().item()
    print(f"\n{mode} cache, threshold={threshold}: agreement {agree:.3f}, nfe {stats.nfe} "
          f"(reference {ref_stats.nfe}), full forwards {stats.full_forwards}")  # fmt: skip
    assert stats.full_forwards == 4  # one refresh per block
    assert not bool((out == policy.mask_id).any())
    assert agree >= 0.2  # a floor against a broken cache (unrelated tokens agree ~1% of the time)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_keeps_padding_invariance(policy, mode):
    gen = torch.Generator().manual_seed(9)
    seqs = [torch.randint(5, 100, (n,), generator=gen).tolist() for n in (4, 10)]
    ids, mask = left_pad(seqs, policy.pad_id)
    opts = dict(gen_length=16, steps=16, block_length=8, mask_id=policy.mask_id, cache=mode)
    batched = generate(policy, ids, attention_mask=mask, **opts)
    for i, seq in enumerate(seqs):
        alone = generate(policy, torch.tensor([seq]), **opts)
        assert batched[i, ids.shape[1] :].tolist() == alone[0, len(seq) :].tolist()


def test_cache_needs_a_model_with_a_cache_argument(prompts):
    class NoCache(torch.nn.Module):
        def forward(self, x, attention_mask=None):
            raise AssertionError("must fail before the first forward")

    with pytest.raises(ValueError, match="no KV cache argument"):
        generate(NoCache(), prompts, gen_length=8, steps=8, block_length=8, mask_id=1, cache="dual")


def _tiny_dream(seed: int = 0):
    """A randomly initialised native Dream (shifted logits) with the character tokenizer."""
    from dllm import Policy, build_char_tokenizer
    from dllm.models import DreamConfig, DreamModel

    tok = build_char_tokenizer()
    config = DreamConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
        mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DreamModel(config)
        with torch.no_grad():  # larger weights: context-dependent logits (see conftest.varied_policy)
            for param in model.parameters():
                if param.dim() == 2:
                    param.normal_(0, 0.2)
    return Policy(
        model.eval(), tok, kind="dream", mask_id=tok.mask_token_id,
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@torch.no_grad()
def test_shifted_model_cached_logits_match_at_every_block_position(mode):
    # Dream's logit for the block's first position comes from the position before the block:
    # right after the refresh (exact K/V) every position, that one included, must agree.
    policy = _tiny_dream()
    assert policy.shifted_logits
    x, mask, pos, plen = _canvas(policy, [6, 11], gen_length=24)
    for start in (plen, plen + 8, plen + 16):
        end = start + 8
        full = make_block_forward("none", policy, mask, pos)(x, start, end, first_step=True)
        cached = make_block_forward(mode, policy, mask, pos)
        cached(x, start, end, first_step=True)
        served = cached(x, start, end, first_step=False)
        per_position = (served - full).abs().amax(dim=(0, 2))
        assert per_position.max().item() < 1e-5, per_position.tolist()
        assert cached.nfe == 2 and cached.full_forwards == 1
