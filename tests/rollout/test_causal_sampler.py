"""`engine: hf` for causal policies: greedy decoding, recorded log-probs, seeding, EOS, versions."""

import pytest
import torch

from dllm.causal import build_tiny_causal_policy, pack_prompt_response, response_logprobs
from dllm.weights import pack_bucket, plan_buckets
from rollout.causal_sampler import CausalSampler, CausalSamplingConfig, pad_completion


def tiny(seed: int = 0):
    return build_tiny_causal_policy(
        hidden_size=64, num_layers=2, num_heads=2, initializer_range=0.15, seed=seed
    )


@pytest.fixture(scope="module")
def policy():
    return tiny(0)


@pytest.fixture
def prompts():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(5, 100, (n,), generator=gen).tolist() for n in (4, 9, 6)]


def greedy_without_cache(policy, prompt, steps):
    """Reference: re-run the whole sequence each step, no cache, no padding."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(policy(torch.tensor([seq]))[0, -1].argmax())
            seq.append(nxt)
            if nxt == policy.eos_id:
                break
    return seq[len(prompt) :]


def test_greedy_matches_the_uncached_reference(policy, prompts):
    sampler = CausalSampler("hf-0", policy, CausalSamplingConfig(gen_length=12, temperature=0))
    rollouts = sampler.generate(prompts, 1)
    for prompt, rollout in zip(prompts, rollouts, strict=True):
        expected = greedy_without_cache(policy, prompt, 12)
        assert rollout.response_ids[: rollout.num_tokens] == expected
        assert len(rollout.response_ids) == len(rollout.logprobs) == 12


def test_recorded_logprobs_match_teacher_forcing(policy, prompts):
    sampling = CausalSamplingConfig(gen_length=10, temperature=0.8)
    rollouts = CausalSampler("hf-0", policy, sampling, micro_batch_size=4).generate(prompts, 2, seed=5)
    ids, mask = pack_prompt_response(
        [r.prompt_ids for r in rollouts],
        [r.response_ids[: r.num_tokens] for r in rollouts],
        pad_id=policy.pad_id,
        response_length=10,
    )
    with torch.no_grad():
        forced = response_logprobs(policy, ids, mask, 10, temperature=0.8)
    for row, rollout in enumerate(rollouts):
        n = rollout.num_tokens
        torch.testing.assert_close(
            torch.tensor(rollout.logprobs[:n]), forced[row, :n].float(), rtol=0, atol=1e-5
        )
        assert rollout.logprobs[n:] == [0.0] * (10 - n)


def test_samples_do_not_depend_on_their_batch(policy, prompts):
    sampling = CausalSamplingConfig(gen_length=8, temperature=1.0)
    together = CausalSampler("hf-0", policy, sampling, micro_batch_size=16).generate(prompts, 3, seed=11)
    alone = CausalSampler("hf-0", policy, sampling, micro_batch_size=1).generate(prompts, 3, seed=11)
    assert [r.response_ids for r in together] == [r.response_ids for r in alone]
    other = CausalSampler("hf-0", policy, sampling).generate(prompts, 3, seed=12)
    assert [r.response_ids for r in together] != [r.response_ids for r in other]
    # Samples of one group differ (temperature 1 on a varied model).
    assert len({tuple(r.response_ids) for r in together[:3]}) > 1


def test_layout_groups_and_provenance(policy, prompts):
    sampler = CausalSampler("hf-2", policy, CausalSamplingConfig(gen_length=6, temperature=1.0))
    rollouts = sampler.generate(
        prompts, 2, group_ids=["a", "b", "c"], metadata=[{"k": i} for i in range(3)], item_indices=[7, 8, 9]
    )
    assert [(r.group_id, r.sample_index) for r in rollouts] == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0), ("c", 1)
    ]  # fmt: skip
    assert [r.item_index for r in rollouts] == [7, 7, 8, 8, 9, 9]
    assert all(r.worker_id == "hf-2" and r.policy_version == 0 for r in rollouts)
    assert rollouts[3].metadata == {"k": 1}


def test_pad_completion_cuts_at_the_first_eos():
    tokens, logps = pad_completion([7, 2, 9], [-1.0, -2.0, -3.0], 5, eos_id=2)
    assert tokens == [7, 2, 2, 2, 2] and logps == [-1.0, -2.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="longer than gen_length"):
        pad_completion([7, 8, 9], [0.0] * 3, 2, eos_id=2)


def test_eos_stops_and_pads(prompts):
    policy = tiny(0)
    def eos_first(module, args, logits):  # EOS becomes the argmax everywhere
        logits = logits.clone()
        logits[..., policy.eos_id] += 100.0
        return logits

    policy.model.lm_head.register_forward_hook(eos_first)
    rollouts = CausalSampler("hf-0", policy, CausalSamplingConfig(gen_length=5, temperature=0)).generate(
        prompts, 1
    )
    for r in rollouts:
        assert r.num_tokens == 1 and r.response_ids == [policy.eos_id] * 5
        assert r.logprobs[0] == pytest.approx(0.0, abs=1e-4) and r.logprobs[1:] == [0.0] * 4


def test_weight_loads_switch_policy_and_version(prompts):
    sampling = CausalSamplingConfig(gen_length=8, temperature=0)
    sampler = CausalSampler("hf-0", tiny(0), sampling)
    new = tiny(1)
    reference = CausalSampler("ref", tiny(1), sampling).generate(prompts, 1)
    before = sampler.generate(prompts, 1)
    assert [r.response_ids for r in before] != [r.response_ids for r in reference]
    state = new.model.state_dict()
    buckets = plan_buckets(state.items(), bucket_bytes=64 * 1024)
    sampler.load_weights(3, buckets, [pack_bucket(b, state) for b in buckets])
    after = sampler.generate(prompts, 1)
    assert [r.response_ids for r in after] == [r.response_ids for r in reference]
    assert {r.policy_version for r in after} == {3}
    with pytest.raises(KeyError, match="missing"):
        sampler.load_state_dict(4, {k: v for k, v in state.items() if "lm_head" not in k})
    assert sampler.policy_version == 3
