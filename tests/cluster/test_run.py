"""End-to-end runs of the distributed loop on a private local Ray instance (tiny model, CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cluster.launch import train

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _step_records(run_dir):
    return [r for r in _records(run_dir) if "train/loss" in r]


def test_short_run_end_to_end(ray_local, tiny_run):
    config = tiny_run("e2e")
    summary = train(config)
    run_dir = config.run_dir
    assert summary["steps"] == 2
    for when in ("before", "after"):
        assert 0.0 <= summary[when]["test_accuracy"] <= 1.0
        assert summary[when]["test_n"] == 8
    assert (run_dir / "config.resolved.yaml").exists()
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    ckpt = run_dir / "checkpoints" / latest
    assert latest == "global_step_2"
    assert (ckpt / "policy" / "model.safetensors").exists()
    assert (ckpt / "optimizer" / "learner_state.pt").exists()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["version"] == 2
    steps = _step_records(run_dir)
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        for prefix in ("rollout/", "train/", "perf/", "time/", "reward/"):
            assert any(k.startswith(prefix) for k in record), prefix
    # Every sample generated was trained on: the accounting balances.
    last = steps[-1]
    assert last["accounting/generated"] == last["accounting/trained"] == 2 * 4 * 4


@pytest.mark.extended  # the default run checks the same on two rollout hosts, every step:
# tests/multinode/test_runs_across_hosts.py::test_a (version_min == version_max == step - 1)
def test_every_rollout_worker_samples_with_the_current_version(ray_local, tiny_run):
    config = tiny_run("versions", "rollout.num_workers=2", "trainer.total_steps=3")
    train(config)
    for record in _step_records(config.run_dir):
        # Synchronous mode: the batch of step s was sampled by policy version s-1, on every worker.
        assert record["rollout/version_min"] == record["rollout/version_max"] == record["step"] - 1
        assert record["rollout/workers"] == 2
        assert record["rollout/staleness_max"] == 0


# Without Ray the default run checks the same bookkeeping: tests/cluster/test_loop.py::
# test_asynchronous_samples_are_one_version_behind_with_their_own_behaviour_terms.
@pytest.mark.parametrize("learners", [pytest.param((), marks=pytest.mark.extended),
                                      pytest.param(("learner.num_workers=2", "learner.sharding=fsdp"),
                                                   marks=pytest.mark.extended)],
                         ids=["replicated", "sharded"])
def test_async_mode_records_staleness(ray_local, tiny_run, learners):
    config = tiny_run("async", "trainer.max_staleness=1", "trainer.total_steps=3", *learners)
    train(config)
    records = _step_records(config.run_dir)
    assert records[0]["rollout/staleness_max"] == 0  # the first batch is sampled before any update
    assert all(r["rollout/staleness_max"] == 1 for r in records[1:])
    # Behaviour-policy old terms came from the rollout actors, so z starts away from 0 off-policy.
    assert all(r["rollout/old_terms_from_rollout"] == 1 for r in records)
    last = records[-1]
    assert last["accounting/generated"] == last["accounting/trained"] + last.get("accounting/dropped/run_ended", 0)


@pytest.mark.extended  # without Ray: tests/learner/test_learner_distributed.py (2 gloo ranks = 1)
def test_two_learners_make_the_same_update_as_one(ray_local, tiny_run):
    weights = {}
    for ranks in (1, 2):
        config = tiny_run(f"ranks{ranks}", f"learner.num_workers={ranks}", "trainer.total_steps=1",
                          "warmup.steps=0", "trainer.eval_limit=2")
        train(config)
        weights[ranks] = load_file(str(config.run_dir / "checkpoints" / "global_step_1" / "policy" / "model.safetensors"))
    start = None
    for name, one in weights[1].items():
        torch.testing.assert_close(weights[2][name], one, rtol=1e-5, atol=1e-6, msg=name)
        start = name
    assert start is not None


@pytest.mark.extended  # without Ray: tests/learner/test_learner_fsdp.py (sharded = replicated, state reload)
def test_sharded_learners_train_and_resume_like_one_replica(ray_local, tiny_run):
    # Two FSDP ranks (warm start included) make the updates of one replicated rank, and a run
    # resumed under FSDP from the replicated run's checkpoint continues it exactly: the
    # checkpoint holds full weights and a full optimizer state in either mode.
    common = ("trainer.total_steps=2", "checkpoint.every=1", "checkpoint.keep_last=5", "trainer.eval_limit=2")
    sharded = ("learner.num_workers=2", "learner.sharding=fsdp")
    one = tiny_run("replica", *common)
    train(one)
    fsdp = tiny_run("fsdp", *common, *sharded)
    train(fsdp)
    resumed = tiny_run("fsdp-resumed", *common, *sharded)
    summary = train(resumed, resume=str(one.run_dir / "checkpoints" / "global_step_1"))
    assert summary["start_step"] == 1 and summary["steps"] == 2

    def weights(config, step):
        return load_file(str(config.run_dir / "checkpoints" / f"global_step_{step}" / "policy" / "model.safetensors"))

    for step, runs in ((1, (fsdp,)), (2, (fsdp, resumed))):
        expected = weights(one, step)
        for run in runs:
            got = weights(run, step)
            assert got.keys() == expected.keys()
            for name, value in expected.items():
                torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=f"{run.run_name} {name}")
    # The sharded runs sampled with the weights they trained: their reward curves match too.
    assert [r["train/reward_mean"] for r in _step_records(fsdp.run_dir)] == pytest.approx(
        [r["train/reward_mean"] for r in _step_records(one.run_dir)])


def test_mixed_precision_learner_feeds_bf16_rollouts(ray_local, tiny_run):
    # fp32 master weights on sharded learners, bf16 everywhere else: the rollout workers load
    # every version (cast to bf16 in the buckets) and the checkpoint keeps the fp32 weights.
    config = tiny_run("mixed", "model.dtype=bf16", "learner.num_workers=2", "learner.sharding=fsdp",
                      "learner.compute_dtype=bf16", "warmup.steps=0", "trainer.eval_limit=2")
    train(config)
    for record in _step_records(config.run_dir):
        assert record["rollout/version_min"] == record["rollout/version_max"] == record["step"] - 1
    saved = load_file(str(config.run_dir / "checkpoints" / "global_step_2" / "policy" / "model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}
