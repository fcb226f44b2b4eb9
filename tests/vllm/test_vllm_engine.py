"""`engine: vllm` against `engine: hf` on the tiny causal model: greedy tokens, log-probs, and
outputs after an in-place weight update. One engine for the whole session (conftest.py)."""

import pytest
import torch
from vllm_helpers import tiny_causal

from dllm.causal import pack_prompt_response, response_logprobs
from dllm.weights import pack_bucket, plan_buckets, to_numpy
from rollout.causal_sampler import CausalSampler, CausalSamplingConfig
from rollout.vllm_client import VLLMWorkerError

pytestmark = pytest.mark.vllm

LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(5, 100, (n,), generator=gen).tolist() for n in (4, 11, 7)]


def push(client, policy, version):
    """A learner-style update: the state dict in 64 KiB buckets, as numpy buffers."""
    state = policy.model.state_dict()
    buckets = plan_buckets(state.items(), bucket_bytes=64 * 1024)
    client.load_weights(version, buckets, [to_numpy(pack_bucket(b, state)) for b in buckets])


def teacher_forced(policy, rollouts, length, temperature):
    ids, mask = pack_prompt_response(
        [r.prompt_ids for r in rollouts],
        [r.response_ids[: r.num_tokens] for r in rollouts],
        pad_id=policy.pad_id,
        response_length=length,
    )
    with torch.no_grad():
        return response_logprobs(policy, ids, mask, length, temperature=temperature)


def max_logprob_gap(rollouts, reference) -> float:
    gaps = [
        (torch.tensor(r.logprobs[: r.num_tokens]) - reference[k, : r.num_tokens].float()).abs().max()
        for k, r in enumerate(rollouts)
    ]
    return float(torch.stack(gaps).max())


def test_greedy_tokens_and_logprobs_match_hf(vllm_client, prompts):
    policy = tiny_causal(0)
    push(vllm_client, policy, 1)
    vllm_client.sampling = CausalSamplingConfig(gen_length=16, temperature=0)
    hf = CausalSampler("hf", policy, CausalSamplingConfig(gen_length=16, temperature=0))
    ours, theirs = vllm_client.generate(prompts, 2), hf.generate(prompts, 2)
    assert [r.response_ids for r in ours] == [r.response_ids for r in theirs]
    assert [r.num_tokens for r in ours] == [r.num_tokens for r in theirs]
    gap = max_logprob_gap(ours, torch.tensor([r.logprobs for r in theirs]))
    print(f"greedy: max |logprob vLLM - hf| = {gap:.2e}")
    assert gap < LOGPROB_ATOL


def test_sampled_logprobs_match_teacher_forcing(vllm_client, prompts):
    policy = tiny_causal(0)
    push(vllm_client, policy, 1)
    vllm_client.sampling = CausalSamplingConfig(gen_length=16, temperature=0.8)
    rollouts = vllm_client.generate(prompts, 4, seed=7)
    gap = max_logprob_gap(rollouts, teacher_forced(policy, rollouts, 16, 0.8))
    print(f"T=0.8: max |logprob vLLM - hf teacher-forced| = {gap:.2e}")
    assert gap < LOGPROB_ATOL
    # Per-request seeds: the call reproduces, another seed differs, samples of a group differ.
    again = vllm_client.generate(prompts, 4, seed=7)
    assert [r.response_ids for r in again] == [r.response_ids for r in rollouts]
    other = vllm_client.generate(prompts, 4, seed=8)
    assert [r.response_ids for r in other] != [r.response_ids for r in rollouts]
    assert len({tuple(r.response_ids) for r in rollouts[:4]}) > 1
    alone = vllm_client.generate(prompts[:1], 4, seed=7)  # the batch around a sample is irrelevant
    assert [r.response_ids for r in alone] == [r.response_ids for r in rollouts[:4]]
    for r in rollouts:
        assert len(r.response_ids) == len(r.logprobs) == 16
        assert r.logprobs[r.num_tokens :] == [0.0] * (16 - r.num_tokens)


def test_weight_update_in_place_matches_hf_with_the_new_weights(vllm_client, prompts):
    # A prompt longer than one KV block (128 tokens on the CPU backend) lands in vLLM's prefix
    # cache; without a cache reset after the update it would be read back with the old weights'
    # keys and values (measured: different tokens).
    prompts = prompts + [torch.randint(5, 100, (200,), generator=torch.Generator().manual_seed(4)).tolist()]
    vllm_client.sampling = CausalSamplingConfig(gen_length=16, temperature=0)
    sampling = CausalSamplingConfig(gen_length=16, temperature=0)
    old, new = tiny_causal(0), tiny_causal(1)
    pid = vllm_client.pid
    push(vllm_client, old, 4)
    before = vllm_client.generate(prompts, 1)  # fills the prefix cache with the old weights' keys
    push(vllm_client, new, 5)
    after = vllm_client.generate(prompts, 1)
    expected = CausalSampler("hf", new, sampling).generate(prompts, 1)
    assert [r.response_ids for r in after] == [r.response_ids for r in expected]
    assert [r.response_ids for r in after] != [r.response_ids for r in before]
    gap = max_logprob_gap(after, torch.tensor([r.logprobs for r in expected]))
    assert gap < LOGPROB_ATOL
    assert {r.policy_version for r in before} == {4} and {r.policy_version for r in after} == {5}
    assert vllm_client.pid == pid  # same process, same engine: no restart
    push(vllm_client, old, 6)  # and back: the first weights give the first outputs again
    assert [r.response_ids for r in vllm_client.generate(prompts, 1)] == [r.response_ids for r in before]


def test_a_bad_update_is_rejected_and_changes_nothing(vllm_client, prompts):
    vllm_client.sampling = CausalSamplingConfig(gen_length=8, temperature=0)
    push(vllm_client, tiny_causal(0), 7)
    before = vllm_client.generate(prompts, 1)
    state = tiny_causal(1).model.state_dict()
    partial = {k: v for k, v in state.items() if k != "lm_head.weight"}
    with pytest.raises(VLLMWorkerError, match="missing from the update.*lm_head"):
        vllm_client.load_state_dict(8, partial)
    wrong = dict(state, **{"lm_head.weight": state["lm_head.weight"][:-1]})
    with pytest.raises(VLLMWorkerError, match="shape"):
        vllm_client.load_state_dict(8, wrong)
    assert vllm_client.policy_version == 7
    after = vllm_client.generate(prompts, 1)
    assert [r.response_ids for r in after] == [r.response_ids for r in before]
    assert {r.policy_version for r in after} == {7}


def test_bfloat16_update_is_accepted(vllm_client, prompts):
    """A bf16 learner's weights load into the float32 engine (vLLM's loader casts)."""
    vllm_client.sampling = CausalSamplingConfig(gen_length=8, temperature=0)
    policy = tiny_causal(1)
    bf16 = {k: v.to(torch.bfloat16) for k, v in policy.model.state_dict().items()}
    vllm_client.load_state_dict(9, bf16)
    rounded = tiny_causal(1)
    rounded.model.load_state_dict({k: v.float() for k, v in bf16.items()})
    expected = CausalSampler("hf", rounded, CausalSamplingConfig(gen_length=8, temperature=0))
    got = vllm_client.generate(prompts, 1)
    assert [r.response_ids for r in got] == [r.response_ids for r in expected.generate(prompts, 1)]


def test_grpo_steps_with_vllm_rollouts_raise_a_toy_reward(vllm_client):
    """The loop the cluster runs, in one process: vLLM samples, the learner takes a GRPO step,
    the new weights go back into the engine in place, and the next rollouts carry that version.
    Reward: share of response tokens equal to one target token."""
    from learner.advantages import group_advantages
    from learner.grpo import completion_mask, grpo_objective

    length, target = 6, 40
    vllm_client.sampling = CausalSamplingConfig(gen_length=length, temperature=1.0)
    policy = tiny_causal(0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-2)
    prompts = [[10 + i, 20 + i] for i in range(4)]
    means = []
    for step in range(12):
        push(vllm_client, policy, 100 + step)
        rollouts = vllm_client.generate(prompts, 8, seed=step)
        assert {r.policy_version for r in rollouts} == {100 + step}
        rewards = torch.tensor([sum(t == target for t in r.response_ids[: r.num_tokens]) / length
                                for r in rollouts])  # fmt: skip
        means.append(float(rewards.mean()))
        adv = group_advantages(rewards, torch.tensor([r.group_id for r in rollouts]))
        ids, mask = pack_prompt_response([r.prompt_ids for r in rollouts],
                                         [r.response_ids for r in rollouts], pad_id=policy.pad_id)  # fmt: skip
        logp = response_logprobs(policy.train(), ids, mask, length, temperature=1.0)
        old = torch.tensor([r.logprobs for r in rollouts])
        done = completion_mask(ids[:, -length:], policy.eos_id)
        # On-policy: vLLM's log-probs are the learner's, so every ratio starts at 1.
        assert (logp[done].detach() - old[done]).abs().max() < LOGPROB_ATOL
        terms = grpo_objective(logp, old, adv, done, clip_eps=0.2)
        optimizer.zero_grad()
        (-terms.objective.mean()).backward()
        optimizer.step()
        policy.eval()
    print("vLLM GRPO toy reward by step:", [round(m, 3) for m in means])
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.2, means
