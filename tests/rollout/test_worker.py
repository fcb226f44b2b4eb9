"""RolloutWorker: groups, seeds, rollout fields, and all-or-nothing weight loads by version."""

import threading
import time

import pytest
import torch

from dllm import build_tiny_policy
from dllm.weights import pack_bucket, plan_buckets, to_numpy
from rollout import Rollout, RolloutWorker, SamplingConfig

SAMPLING = SamplingConfig(gen_length=16, steps=8, block_length=8, temperature=1.0)
PROMPTS = [[40, 41, 42], [50, 51, 52, 53, 54, 55], [60]]


def _worker(micro_batch_size=4, seed=0, sampling=SAMPLING):
    policy = build_tiny_policy(hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return RolloutWorker(
        "rollout-3", policy, sampling, seed=seed, micro_batch_size=micro_batch_size
    )


def _donor_state(seed=1):
    donor = build_tiny_policy(hidden_size=32, num_layers=1, num_heads=2, seed=seed)
    return {k: v.clone() for k, v in donor.model.state_dict().items()}


def _weights(worker):
    return {k: v.clone() for k, v in worker.policy.model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_generate_returns_groups_with_every_field():
    worker = _worker()
    rollouts = worker.generate(
        PROMPTS, 2, group_ids=["a", "b", "c"], metadata=[{"answer": i} for i in range(3)],
        item_indices=[7, 8, 9],
    )  # fmt: skip
    assert len(rollouts) == 6 and all(isinstance(r, Rollout) for r in rollouts)
    assert [(r.group_id, r.sample_index) for r in rollouts] == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0), ("c", 1),
    ]  # fmt: skip
    for r in rollouts:
        i = "abc".index(r.group_id)
        assert r.prompt_ids == PROMPTS[i] and len(r.response_ids) == 16
        assert r.metadata == {"answer": i} and r.item_index == 7 + i
        assert r.policy_version == 0 and r.worker_id == "rollout-3"
        assert r.nfe == 8 and r.tokens_per_forward == 2.0 and r.seconds > 0
        assert worker.policy.mask_id not in r.response_ids
        assert "[EOS]" not in r.text and "[MASK]" not in r.text
    assert repr(worker) == "RolloutWorker(rollout-3, v=0)"


def test_samples_do_not_depend_on_micro_batching():
    a = _worker(micro_batch_size=1).generate(PROMPTS, 2, seed=3)
    b = _worker(micro_batch_size=5).generate(PROMPTS, 2, seed=3)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert a[0].response_ids != a[1].response_ids  # two samples of one group differ


def test_calls_without_a_seed_give_new_samples_reproducibly():
    w1, w2 = _worker(seed=1), _worker(seed=1)
    first, second = w1.generate(PROMPTS, 1), w1.generate(PROMPTS, 1)
    assert [r.response_ids for r in first] != [r.response_ids for r in second]
    assert [r.response_ids for r in w2.generate(PROMPTS, 1)] == [r.response_ids for r in first]


def _load(worker, version, state):
    worker.load_weights(version, *_buckets(state))


def test_load_weights_by_version():
    worker = _worker()
    new = _donor_state()
    _load(worker, 4, new)
    assert worker.policy_version == 4 and repr(worker) == "RolloutWorker(rollout-3, v=4)"
    assert _same(_weights(worker), new)
    assert worker.generate(PROMPTS[:1], 1)[0].policy_version == 4


@pytest.mark.parametrize("damage", ["shape", "dtype", "missing", "unknown"])
def test_bad_update_leaves_old_weights_and_version(damage):
    worker = _worker()
    _load(worker, 1, _donor_state(1))
    before = _weights(worker)
    bad = _donor_state(2)
    last = list(bad)[-1]  # damaged after the others, so a copy-as-you-go loader would be caught
    if damage == "shape":
        bad[last] = torch.zeros(3, 3)
    elif damage == "dtype":
        bad[last] = bad[last].double()
    elif damage == "missing":
        del bad[last]
    else:
        bad["model.extra.weight"] = torch.zeros(2)
    with pytest.raises((KeyError, ValueError)):
        _load(worker, 2, bad)
    assert worker.policy_version == 1 and _same(_weights(worker), before)


def _buckets(state, bucket_bytes=4096):
    buckets = plan_buckets(state.items(), bucket_bytes=bucket_bytes)
    return buckets, [to_numpy(pack_bucket(b, state)) for b in buckets]


def test_load_weights_from_buckets():
    worker = _worker()
    new = _donor_state()
    buckets, flats = _buckets(new)
    assert len(buckets) > 1
    worker.load_weights(7, buckets, flats)
    assert worker.policy_version == 7 and _same(_weights(worker), new)


def test_bad_bucket_leaves_old_weights_and_version():
    worker = _worker()
    before = _weights(worker)
    buckets, flats = _buckets(_donor_state())
    flats[-1] = flats[-1][:-1]  # the last buffer is one element short
    with pytest.raises(ValueError):
        worker.load_weights(3, buckets, flats)
    assert worker.policy_version == 0 and _same(_weights(worker), before)


def test_load_waits_for_a_running_generate():
    """A generate started under version 0 runs every forward on version 0 weights; the load lands after."""
    sampling = SamplingConfig(gen_length=64, steps=64, block_length=64)
    worker = _worker(sampling=sampling)
    expected_v0 = _worker(sampling=sampling).generate(PROMPTS, 2, seed=1)
    old_probe = worker.policy.model.lm_head.weight.sum().item()
    new = _donor_state()
    started, seen, results = threading.Event(), [], {}

    def on_forward(module, args):
        seen.append(module.model.lm_head.weight.sum().item())  # the weights this forward uses
        started.set()
        time.sleep(0.002)  # give the loader every chance to barge in

    handle = worker.policy.register_forward_pre_hook(on_forward)
    thread = threading.Thread(target=lambda: results.update(r=worker.generate(PROMPTS, 2, seed=1)))
    thread.start()
    assert started.wait(timeout=30)
    _load(worker, 1, new)  # blocks until the generate releases the lock
    thread.join()
    handle.remove()
    assert len(seen) == 2 * 64 and set(seen) == {old_probe}  # two micro-batches, one version
    assert {r.policy_version for r in results["r"]} == {0}
    assert [r.response_ids for r in results["r"]] == [r.response_ids for r in expected_v0]
    assert worker.policy_version == 1 and _same(_weights(worker), new)
