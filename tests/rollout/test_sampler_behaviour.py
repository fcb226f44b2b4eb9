"""Sampler behaviour: schedule, padding, seeds, remasking, EOS handling, threshold decoding."""

from types import SimpleNamespace

import pytest
import torch

from dllm.padding import left_pad
from rollout import SamplingConfig, generate, generate_with_stats, transfer_schedule
from rollout.sampler import select_transfer

MASK, EOS = 1, 2


def test_transfer_schedule_splits_evenly_front_loaded():
    sched = transfer_schedule(torch.tensor([10, 8, 3]), 4)
    assert sched.tolist() == [[3, 3, 2, 2], [2, 2, 2, 2], [1, 1, 1, 0]]
    assert sched.sum(1).tolist() == [10, 8, 3]


def test_select_transfer_top_k_and_threshold():
    conf = torch.tensor([[0.9, 0.2, 0.95, 0.5], [0.1, 0.3, 0.2, 0.05]], dtype=torch.float64)
    masked = torch.tensor([[True, True, False, True], [True, True, True, True]])
    top = select_transfer(conf, masked, torch.tensor([2, 1]), None)
    # position 2 of row 0 is already decoded: never chosen, whatever its confidence
    assert top.tolist() == [[True, False, False, True], [False, True, False, False]]
    thr = select_transfer(conf, masked, None, 0.4)
    # row 1 has nothing above 0.4: its most confident masked token is still committed
    assert thr.tolist() == [[True, False, False, True], [False, True, False, False]]


def _padded_batch(policy, lengths):
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(5, 100, (n,), generator=gen).tolist() for n in lengths]
    ids, mask = left_pad(seqs, policy.pad_id)
    return seqs, ids, mask


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_padded_batch_gives_each_prompt_what_it_gets_alone(policy, temperature):
    seqs, ids, mask = _padded_batch(policy, [5, 12, 9])
    opts = dict(gen_length=24, steps=12, block_length=8, mask_id=policy.mask_id,
                eos_id=policy.eos_id, temperature=temperature)  # fmt: skip
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    batched = generate(policy, ids, attention_mask=mask, generator=gens, **opts)
    for i, seq in enumerate(seqs):
        alone = generate(
            policy, torch.tensor([seq]), generator=[torch.Generator().manual_seed(100 + i)], **opts
        )
        assert batched[i, ids.shape[1] :].tolist() == alone[0, len(seq) :].tolist()


def test_same_seed_same_tokens_other_seed_other_tokens(policy, prompts):
    opts = dict(gen_length=32, steps=16, block_length=8, mask_id=policy.mask_id, temperature=1.0)
    a = generate(policy, prompts, generator=torch.Generator().manual_seed(5), **opts)
    b = generate(policy, prompts, generator=torch.Generator().manual_seed(5), **opts)
    c = generate(policy, prompts, generator=torch.Generator().manual_seed(6), **opts)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_remasking_is_seeded_and_differs_from_low_confidence(policy, prompts):
    opts = dict(gen_length=32, steps=32, block_length=32, mask_id=policy.mask_id)
    rand_a = generate(
        policy, prompts, remasking="random", generator=torch.Generator().manual_seed(1), **opts
    )
    rand_b = generate(
        policy, prompts, remasking="random", generator=torch.Generator().manual_seed(1), **opts
    )
    low = generate(policy, prompts, **opts)
    assert torch.equal(rand_a, rand_b)
    assert not torch.equal(rand_a, low)
    assert not bool((rand_a == policy.mask_id).any())


class ScriptedModel(torch.nn.Module):
    """Logits fixed per response position (vocab 8): a model whose answer we know in advance.

    `favour[i]` is the token response position i prefers, with probability `prob[i]`; every call
    records the canvas it saw.
    """

    def __init__(self, prompt_len, favour, prob):
        super().__init__()
        self.prompt_len, self.favour, self.prob = prompt_len, favour, prob
        self.seen = []

    def forward(self, x, attention_mask=None):
        self.seen.append(x.clone())
        logits = torch.zeros(x.shape[0], x.shape[1], 8)
        for i, (tok, p) in enumerate(zip(self.favour, self.prob, strict=True)):
            other = (1 - p) / 7
            logits[:, self.prompt_len + i] = torch.log(torch.tensor(other))
            logits[:, self.prompt_len + i, tok] = torch.log(torch.tensor(p))
        return SimpleNamespace(logits=logits)


def test_leftover_masks_become_eos():
    # Position 1 keeps proposing the mask token itself, as LLaDA allows: "committing" it leaves it
    # masked and most confident, so it takes every later step's budget and 3 masks remain.
    model = ScriptedModel(2, favour=[5, MASK, 6, 7], prob=[0.9, 0.8, 0.7, 0.6])
    out = generate(model, torch.tensor([[3, 4]]), gen_length=4, steps=4, block_length=4,
                   mask_id=MASK, eos_id=EOS)  # fmt: skip
    assert out[0, 2:].tolist() == [5, EOS, EOS, EOS]
    kept = generate(model, torch.tensor([[3, 4]]), gen_length=4, steps=4, block_length=4,
                    mask_id=MASK)  # fmt: skip
    assert kept[0, 2:].tolist() == [5, MASK, MASK, MASK]  # without eos_id the masks stay


@pytest.mark.parametrize("eval_mode", [False, True])
def test_eval_mode_commits_a_predicted_eos_last(eval_mode):
    model = ScriptedModel(2, favour=[EOS, 5, 6, 7], prob=[0.95, 0.6, 0.5, 0.4])
    out = generate(model, torch.tensor([[3, 4]]), gen_length=4, steps=4, block_length=4,
                   mask_id=MASK, eos_id=EOS, eval_mode=eval_mode)  # fmt: skip
    assert out[0, 2:].tolist() == [EOS, 5, 6, 7]
    eos_still_masked = [int(x[0, 2]) == MASK for x in model.seen]
    # Training order: EOS (most confident) goes first. Eval: its confidence is 0, so it goes last.
    assert eos_still_masked == (
        [True, True, True, True] if eval_mode else [True, False, False, False]
    )


def test_threshold_decoding_reduces_nfe(policy, prompts):
    opts = dict(gen_length=32, steps=32, block_length=8, mask_id=policy.mask_id)
    _, base = generate_with_stats(policy, prompts, **opts)
    out, fast = generate_with_stats(policy, prompts, threshold=0.1, **opts)
    assert base.nfe == 32
    assert fast.nfe < base.nfe and fast.tokens_per_forward > 1.0
    assert not bool((out == policy.mask_id).any())
    _, always = generate_with_stats(policy, prompts, threshold=0.0, **opts)
    assert always.nfe == 4  # every masked token clears a zero threshold: one forward per block


def test_invalid_options_name_the_problem():
    with pytest.raises(ValueError, match="multiple of block_length"):
        SamplingConfig(gen_length=30, block_length=8, steps=30)
    with pytest.raises(ValueError, match="number of blocks"):
        SamplingConfig(gen_length=32, block_length=8, steps=6)
    with pytest.raises(ValueError, match="remasking"):
        SamplingConfig(remasking="top_p")
    with pytest.raises(ValueError, match="cache"):
        SamplingConfig(cache="paged")
    with pytest.raises(ValueError, match="needs model confidences"):
        SamplingConfig(remasking="random", threshold=0.9)
    with pytest.raises(ValueError, match="needs eos_id"):
        generate(None, torch.zeros(1, 2, dtype=torch.long), gen_length=4, steps=4, block_length=4,
                 mask_id=MASK, eval_mode=True)  # fmt: skip
