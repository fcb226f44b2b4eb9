"""The sampler against LLaDA's published `generate`, re-implemented here step by step.

The reference below follows ML-GSAI/LLaDA generate.py: noise and confidences over the whole
sequence, -inf confidence after the current block and at unmasked positions, torch.topk per row,
float64 Gumbel-max `exp(logits) / (-log U)^T`. Positions outside the current block never influence
the result, so for seeded comparisons at temperature > 0 the reference takes its uniforms from a
hook that draws the block's part from the shared generator (the rest is unrelated noise).
"""

import pytest
import torch
import torch.nn.functional as F

from rollout import generate, generate_with_stats


def reference_schedule(block_mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    mask_num = block_mask_index.sum(dim=1, keepdim=True)
    base, remainder = mask_num // steps, mask_num % steps
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        out[i, : remainder[i]] += 1
    return out


def block_uniform(generator):
    """Uniforms of a full [B, T, ...] shape whose block slice comes from `generator`."""

    def draw(shape, dtype, start, end):
        full = torch.rand(shape, dtype=dtype)  # global RNG: outside the block, never used
        block = torch.rand((shape[0], end - start, *shape[2:]), generator=generator, dtype=dtype)
        full[:, start:end] = block
        return full

    return draw


@torch.no_grad()
def reference_generate(
    model, prompt, *, steps, gen_length, block_length, temperature, remasking, mask_id, uniform
):
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length), mask_id, dtype=torch.long)
    x[:, :plen] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for nb in range(num_blocks):
        start, end = plen + nb * block_length, plen + (nb + 1) * block_length
        num_transfer = reference_schedule(x[:, start:end] == mask_id, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x).logits
            logits64 = logits.to(torch.float64)
            if temperature > 0:
                noise = uniform(logits.shape, torch.float64, start, end)
                x0 = (logits64.exp() / (-torch.log(noise)) ** temperature).argmax(-1)
            else:  # LLaDA: (-log U)^0 == 1, the noise drops out
                x0 = logits64.exp().argmax(-1)
            if remasking == "low_confidence":
                x0_p = F.softmax(logits64, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            else:
                x0_p = uniform((batch, x.shape[1]), torch.float32, start, end).to(torch.float64)
            x0_p[:, end:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, -torch.inf))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(batch):
                _, idx = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                transfer[j, idx] = True
            x[transfer] = x0[transfer]
    return x


CASES = [
    dict(gen_length=32, steps=32, block_length=32),  # one block, one token per step
    dict(gen_length=32, steps=16, block_length=8),  # four blocks, two tokens per step
    dict(gen_length=48, steps=12, block_length=16),  # uneven: 16 tokens over 4 steps per block
    dict(gen_length=30, steps=12, block_length=10),  # remainder: 10 tokens over 4 steps (3,3,2,2)
]


@pytest.mark.parametrize("case", CASES)
def test_matches_llada_at_temperature_zero(policy, prompts, case):
    ours = generate(policy, prompts, mask_id=policy.mask_id, **case)
    ref = reference_generate(
        policy, prompts, temperature=0.0, remasking="low_confidence", mask_id=policy.mask_id,
        uniform=None, **case,
    )  # fmt: skip
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_matches_llada_with_shared_noise(policy, prompts, temperature, remasking):
    case = dict(gen_length=32, steps=16, block_length=8)
    ours = generate(
        policy, prompts, mask_id=policy.mask_id, temperature=temperature, remasking=remasking,
        generator=torch.Generator().manual_seed(11), **case,
    )  # fmt: skip
    ref = reference_generate(
        policy, prompts, temperature=temperature, remasking=remasking, mask_id=policy.mask_id,
        uniform=block_uniform(torch.Generator().manual_seed(11)), **case,
    )  # fmt: skip
    assert torch.equal(ours, ref)


def test_nfe_is_steps_without_accelerations(policy, prompts):
    _, stats = generate_with_stats(
        policy, prompts, gen_length=32, steps=16, block_length=8, mask_id=policy.mask_id
    )
    assert stats.nfe == 16 and stats.full_forwards == 16
    assert stats.tokens_per_forward == 2.0
