"""The training loop's step logic without Ray: in-process pools around the real workers.

Dispatch, staleness, skipped steps, accounting, version bookkeeping, resume and the no-progress
deadline, checked against `FakePools`, which runs each request on an in-process RolloutWorker
when it is submitted (so a request dispatched before an update samples the old weights, as an
asynchronous cluster would), scores with a VerifierWorker and trains one LearnerWorker.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from ray_helpers import TINY_RUN

from cluster.config import load_config
from cluster.contracts import RolloutBatch
from cluster.loop import LoopState, NoProgressError, TrainingLoop
from cluster.metrics import MetricsLog
from cluster.policy_factory import build_policy
from cluster.run_data import RunData
from dllm.weights import pack_bucket, plan_buckets
from learner.behaviour import behaviour_terms
from learner.worker import LearnerWorker
from rewards.types import RewardResult
from rewards.verifier import VerifierWorker
from rollout.worker import RolloutWorker


class FakePools:
    def __init__(self, config, data: RunData, *, workers: int = 2, unscored_steps=(),
                 unscored=lambda: RewardResult(math.nan, "error", "verifier unavailable")) -> None:
        self.config, self.data = config, data
        self.learner = LearnerWorker(build_policy(config), config.learner, seed=config.seed)
        self.workers = {f"rollout-{i}": RolloutWorker(f"rollout-{i}", build_policy(config), config.rollout.sampling,
                                                      seed=config.seed, micro_batch_size=8)
                        for i in range(workers)}
        self.verifier = VerifierWorker(preset=config.task.preset)
        self.unscored_steps = set(unscored_steps)  # steps whose every verification fails
        self.unscored = unscored  # what such a verification returns
        self.turn, self.checkpoints, self.synced, self.scored_step = 0, [], [], None

    def rollout_workers(self):
        return sorted(self.workers)

    def submit(self, request):
        name = self.rollout_workers()[self.turn % len(self.workers)]
        self.turn += 1
        worker = self.workers[name]
        rollouts = worker.generate(request.prompts, request.group_size, group_ids=request.group_ids,
                                   seed=request.seed, item_indices=request.item_indices)
        terms = None
        if request.behaviour is not None:
            terms = behaviour_terms(worker.policy, [r.prompt_ids for r in rollouts],
                                    [r.response_ids for r in rollouts], spec=request.behaviour, step=request.step,
                                    group_ids=[r.group_id for r in rollouts],
                                    sample_indices=[r.sample_index for r in rollouts], micro_batch_size=16)
        return request.step, RolloutBatch(rollouts, name, 0.0, 0.0, terms)

    def collect(self, tickets, accounting: Counter):
        self.scored_step = tickets[0][0] if tickets else None
        accounting["generated"] += sum(len(b.rollouts) for _, b in tickets)
        return [b for _, b in tickets]

    def in_flight(self, tickets):
        return 0

    def score(self, rollouts):
        if self.scored_step in self.unscored_steps:
            return [self.unscored() for _ in rollouts]
        return self.verifier.score_batch([{"task": self.config.task.name, "completion": r.text,
                                           "item": self.data.train_rows[r.item_index]} for r in rollouts])

    def learner_ranks(self):
        return 1

    def train(self, shards):
        return self.learner.step(shards[0])

    def sync_weights(self, version):
        state = self.learner.weights.full()
        buckets = plan_buckets(state.items(), bucket_bytes=2**20)
        flats = [pack_bucket(b, state) for b in buckets]
        for worker in self.workers.values():
            worker.load_weights(version, buckets, flats)
        self.synced.append(version)
        return {"perf/weight_sync_seconds": 0.0}

    def rollout_versions(self):
        return {n: w.policy_version for n, w in self.workers.items()}

    def evaluate(self, version):
        return {"version": version}

    def checkpoint(self, step, state):
        self.checkpoints.append(state)
        return f"memory://{step}"

    def rescale(self):
        pass


def _run(tmp_path, *overrides, state=None, workers=2, unscored_steps=(), **pool_options):
    config = load_config(None, [*TINY_RUN, f"output_dir={tmp_path}", "warmup.steps=0",
                                "trainer.total_steps=3", *overrides])
    data = RunData(config, log=lambda _: None)
    pools = FakePools(config, data, workers=workers, unscored_steps=unscored_steps, **pool_options)
    lines: list[str] = []
    metrics = MetricsLog(tmp_path / "run")
    loop = TrainingLoop(config, pools, data.train_prompt_ids, pad_id=data.pad_id, metrics=metrics,
                        log=lines.append)
    summary = loop.run(state or LoopState())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return summary, pools, loop, lines, records


def test_synchronous_steps_bookkeeping(tmp_path):
    summary, pools, loop, lines, records = _run(tmp_path)
    assert (summary["steps"], summary["version"]) == (3, 3)
    assert pools.synced == [0, 1, 2, 3]  # version 0 before the first step, then one per update
    steps = [r for r in records if "rollout/samples" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    acc = summary["accounting"]
    assert acc["generated"] == acc["trained"] == 3 * 4 * 4  # prompts x group size per step
    assert all(r["rollout/staleness_max"] == 0 and r["rollout/old_terms_from_rollout"] == 0 for r in steps)
    assert all(0.0 <= r["perf/learner_idle"] <= 1.0 for r in steps)
    assert pools.checkpoints[-1]["version"] == 3 and pools.checkpoints[-1]["cursor"]["position"] == 12
    assert any(line.startswith("step 3/3") for line in lines)


def test_asynchronous_samples_are_one_version_behind_with_their_own_behaviour_terms(tmp_path):
    summary, pools, loop, lines, records = _run(tmp_path, "trainer.max_staleness=1")
    steps = [r for r in records if "rollout/samples" in r]
    assert [r["rollout/staleness_max"] for r in steps] == [0, 1, 1]
    assert all(r["rollout/old_terms_from_rollout"] == 1 for r in steps)
    assert loop.config.learner.clip_eps == 0.2  # DARE's clip, on for stale samples
    assert summary["accounting"]["trained"] == summary["accounting"]["generated"]


# A verifier that is down answers NaN; one that never started an item (queue limit, cancelled,
# closed: rewards/scheduler.py) answers 0.0 marked unscored. Neither is a reward to train on.
@pytest.mark.parametrize("unscored", [
    lambda: RewardResult(math.nan, "error", "verifier unavailable"),
    lambda: RewardResult(0.0, "error", "queued for 9 s behind 4 items", extra={"unscored": "queue"}),
], ids=["nan", "never-started"])
def test_a_step_with_nothing_to_train_leaves_the_version_behind(tmp_path, unscored):
    summary, pools, loop, lines, records = _run(tmp_path, unscored_steps={1}, unscored=unscored)
    assert (summary["steps"], summary["version"]) == (3, 2)
    assert summary["accounting"]["dropped/unscored"] == 16
    assert summary["accounting"]["generated"] == summary["accounting"]["trained"] + 16
    skipped = [r for r in records if r.get("train/skipped_step")]
    assert [r["step"] for r in skipped] == [2]
    assert any("no trainable samples" in line for line in lines)


def test_resume_restores_step_version_cursor_and_accounting(tmp_path):
    full, *_ = _run(tmp_path / "a", unscored_steps={0})
    _, first, *_ = _run(tmp_path / "b", "trainer.total_steps=1", unscored_steps={0})
    saved = first.checkpoints[-1]
    assert (saved["step"], saved["version"]) == (1, 0)
    resumed, *_ = _run(tmp_path / "c", state=LoopState(step=saved["step"], version=saved["version"],
                                                        cursor=saved["cursor"], accounting=Counter(saved["accounting"])))
    assert (resumed["steps"], resumed["version"]) == (full["steps"], full["version"]) == (3, 2)
    assert resumed["accounting"] == full["accounting"]


def test_no_progress_fails_with_the_reason(tmp_path):
    with pytest.raises(NoProgressError, match="no learner update"):
        _run(tmp_path, "trainer.progress_timeout_s=0.0001", unscored_steps={0, 1, 2})


def test_weights_do_not_depend_on_the_number_of_rollout_workers(tmp_path):
    """Sampling seeds and MC masks derive from (seed, step, group, sample index), so one or three
    rollout workers (asynchronous, behaviour terms computed on the workers) train the same weights."""
    _, one, *_ = _run(tmp_path / "one", "trainer.max_staleness=1", workers=1)
    _, three, *_ = _run(tmp_path / "three", "trainer.max_staleness=1", workers=3)
    a, b = one.learner.weights.full(), three.learner.weights.full()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_rollout_idle_is_counted_in_the_window_the_work_ran_in():
    """Asynchronous (lag 1): the batch trained at step 2 was generated during step 1's window, so
    step 1's rollout idle is known, and right, only once step 2 has collected it."""
    from cluster.loop import IdleClock

    def batch(start, end):
        return RolloutBatch([], "rollout-0", start, end)

    clock = IdleClock(lag=1, start=0.0)
    first = clock.step(1, [batch(-3.0, -1.0)], learner_busy=9.0, workers=1, now=10.0)
    assert first == {"perf/learner_idle": pytest.approx(0.1)}  # window 1 not complete yet
    second = clock.step(2, [batch(2.0, 8.0)], learner_busy=5.0, workers=1, now=20.0)
    assert second["perf/rollout_idle_window"] == 1 and second["perf/rollout_idle"] == pytest.approx(0.4)
    assert second["perf/learner_idle"] == pytest.approx(0.5)
    synchronous = IdleClock(lag=0, start=0.0).step(1, [batch(0.0, 2.5)], 5.0, workers=2, now=5.0)
    assert synchronous["perf/rollout_idle"] == pytest.approx(0.75)  # 2.5 of 2 x 5 worker-seconds
