"""Causal policies: the tiny causal Llama, its round trip, padding and token log-probs."""

import pytest
import torch

from dllm import build_tiny_policy
from dllm.causal import (
    build_tiny_causal_policy,
    load_causal_policy,
    pack_prompt_response,
    response_logprobs,
)


@pytest.fixture(scope="module")
def policy():
    return build_tiny_causal_policy(hidden_size=64, num_layers=2, num_heads=2, initializer_range=0.15)


def test_tiny_causal_model_is_causal(policy):
    x = torch.randint(5, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 95 + 5
    with torch.no_grad():
        a, b = policy(x), policy(y)
    # A change at the last position reaches no earlier one, and does change the last one.
    torch.testing.assert_close(a[0, :-1], b[0, :-1], rtol=0, atol=0)
    assert (a[0, -1] - b[0, -1]).abs().max() > 1e-3


def test_same_parameter_count_as_the_diffusion_model():
    causal = build_tiny_causal_policy()
    diffusion = build_tiny_policy()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(causal) == count(diffusion)
    assert causal.tokenizer.get_vocab() == diffusion.tokenizer.get_vocab()


def test_round_trip_through_save_pretrained(tmp_path, policy):
    policy.save_pretrained(tmp_path)
    loaded = load_causal_policy(tmp_path, device="cpu", dtype="fp32")
    assert (loaded.eos_id, loaded.pad_id) == (policy.eos_id, policy.pad_id)
    x = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(policy(x), loaded(x), rtol=0, atol=0)


def test_refuses_a_diffusion_checkpoint(tmp_path):
    build_tiny_policy(hidden_size=32, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="bidirectional"):
        load_causal_policy(tmp_path, device="cpu")


def test_logprobs_by_hand_and_padding_invariant(policy):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 100, (n,), generator=gen).tolist() for n in (3, 7)]
    responses = [torch.randint(5, 100, (n,), generator=gen).tolist() for n in (5, 2)]
    ids, mask = pack_prompt_response(prompts, responses, pad_id=policy.pad_id)
    assert ids.shape == (2, 7 + 5)
    with torch.no_grad():
        batched = response_logprobs(policy, ids, mask, 5, temperature=0.7)
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            # Alone and unpadded: the chain rule written out, one next-token softmax per token.
            seq = torch.tensor([prompt + response])
            logits = policy(seq)[0] / 0.7
            expected = torch.stack(
                [
                    torch.log_softmax(logits[len(prompt) + i - 1], -1)[tok]
                    for i, tok in enumerate(response)
                ]
            )
            torch.testing.assert_close(batched[row, : len(response)], expected, rtol=0, atol=1e-5)


def test_greedy_logprobs_use_raw_logits(policy):
    ids = torch.randint(5, 100, (1, 8))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        raw = response_logprobs(policy, ids, mask, 3, temperature=0)
        at_one = response_logprobs(policy, ids, mask, 3, temperature=1.0)
        hotter = response_logprobs(policy, ids, mask, 3, temperature=2.0)
    torch.testing.assert_close(raw, at_one, rtol=0, atol=0)
    assert (raw - hotter).abs().max() > 1e-3


def test_pack_rejects_mismatches():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        pack_prompt_response([[5], [6]], [[7]], pad_id=0)
    with pytest.raises(ValueError, match="more than L=1"):
        pack_prompt_response([[5]], [[7, 8]], pad_id=0, response_length=1)
