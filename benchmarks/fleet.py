"""Fleet benchmark: does the controller's loop scale with the number of rollout workers?

8, 32 and 64 light rollout actors (no model: each returns synthetic Sudoku completions at once)
feed the real `TrainingLoop`, `RolloutDispatcher`, `Scorer` and a verifier actor; the learner is a
stand-in that returns at once, and the weight sync is one RPC per rollout actor (as the object-store
path is). So a step's time is the controller's own work plus Ray's round trips. Reported per
fleet size: wall seconds per step, the driver's CPU seconds per step and per trajectory, and the
driver's peak RSS; then the per-trajectory overhead at the largest fleet against the smallest,
against the goal of at most 1.5x.

Prompts per step grow with the fleet (4 prompts x 8 samples per worker), so every worker has the
same work per step and per-trajectory cost is comparable across sizes.

    python benchmarks/fleet.py --json benchmarks/results/fleet.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

from cluster.config import load_config  # noqa: E402
from cluster.contracts import RolloutBatch  # noqa: E402
from cluster.dispatch import RolloutDispatcher  # noqa: E402
from cluster.groups import RolloutPool, VerifierPool  # noqa: E402
from cluster.loop import LoopState, TrainingLoop  # noqa: E402
from cluster.scoring import Scorer  # noqa: E402

GOAL = 1.5
PROMPTS_PER_WORKER, GROUP = 4, 8


class LightRolloutActor:
    """A rollout actor without a model: G random 16-digit answers per prompt, no torch imported."""

    def __init__(self, worker_id: str, config) -> None:
        self.worker_id, self.version = worker_id, 0

    def ping(self) -> dict:
        return {"worker_id": self.worker_id, "version": self.version}

    def set_version(self, version: int) -> int:
        self.version = version
        return version

    def generate(self, request) -> RolloutBatch:
        from rollout.types import Rollout

        started, rng = time.time(), random.Random(request.seed)
        rollouts = []
        for prompt, group, item in zip(request.prompts, request.group_ids, request.item_indices, strict=True):
            for j in range(request.group_size):
                text = "".join(rng.choice("1234") for _ in range(16))
                rollouts.append(Rollout(prompt_ids=list(prompt), response_ids=[ord(c) for c in text], text=text,
                                        policy_version=self.version, group_id=group, sample_index=j, nfe=16,
                                        tokens_per_forward=1.0, seconds=0.0, worker_id=self.worker_id,
                                        item_index=item))
        return RolloutBatch(rollouts, self.worker_id, started, time.time())


class FleetPools:
    """The loop's Pools: real dispatch and scoring over Ray, a stand-in learner."""

    def __init__(self, config, rows: list[dict]) -> None:
        self.rollouts = RolloutPool(config, actor_class=LightRolloutActor)
        for _ in range(config.rollout.num_workers):
            self.rollouts.add()
        self.rollouts.start(300, print)
        self.verifiers = VerifierPool(config)
        self.verifiers.add()
        self.verifiers.start(300, print)
        self.dispatcher = RolloutDispatcher(self.rollouts, timeout_s=300, on_dead_worker=lambda name: None)
        self.scorer = Scorer(self.verifiers, task="sudoku", rows=rows, timeout_s=300)
        self.held: dict[str, int] = {}

    def rollout_workers(self):
        return self.rollouts.names()

    def submit(self, request):
        return self.dispatcher.submit(request)

    def collect(self, tickets, accounting: Counter):
        return self.dispatcher.collect(tickets, accounting)

    def in_flight(self, tickets):
        return self.dispatcher.in_flight(tickets)

    def score(self, rollouts):
        return self.scorer.score(rollouts)

    def learner_ranks(self):
        return 1

    def train(self, shards):
        return {"train/loss": 0.0, "train/skipped": 0.0, "train/inner_steps": 1.0, "perf/step_seconds": 0.0}

    def sync_weights(self, version):
        names = self.rollouts.names()
        ray.get([self.rollouts.actors[n].set_version.remote(version) for n in names])
        self.held = dict.fromkeys(names, version)
        return {"perf/weight_sync_receivers": len(names)}

    def rollout_versions(self):
        return dict(self.held)

    def evaluate(self, version):
        return {}

    def checkpoint(self, step, state):
        return "none"

    def rescale(self):
        pass

    def close(self):
        for name in list(self.rollouts.actors):
            self.rollouts.remove(name)
        for handle in self.verifiers.actors.values():
            ray.kill(handle)


class NullMetrics:
    def log(self, step, values):
        self.last = values


def run_fleet(workers: int, steps: int) -> dict:
    from cluster.data import generated_train_and_heldout

    config = load_config(None, [f"rollout.num_workers={workers}", "rollout.num_cpus=0.01",
                                "rewards.num_cpus=0.01", f"rollout.group_size={GROUP}",
                                f"trainer.prompts_per_step={PROMPTS_PER_WORKER * workers}",
                                f"trainer.total_steps={steps}", "run_name=fleet"])
    rows, _ = generated_train_and_heldout(config.task, config.seed)
    prompt_ids = [[ord(c) for c in r["extra_info"]["puzzle"]] for r in rows]
    started = time.perf_counter()
    pools = FleetPools(config, rows)
    start_seconds = time.perf_counter() - started
    timings: list[tuple[float, float]] = []

    class Timed(NullMetrics):
        def __init__(self):
            self.mark = (time.perf_counter(), time.process_time())

        def log(self, step, values):
            now = (time.perf_counter(), time.process_time())
            if "rollout/samples" in values:
                timings.append((now[0] - self.mark[0], now[1] - self.mark[1]))
            self.mark = now

    try:
        loop = TrainingLoop(config, pools, prompt_ids, pad_id=0, metrics=Timed(), log=lambda _: None)
        loop.run(LoopState())
    finally:
        pools.close()
    timed = timings[1:]  # the first step includes the actors' first calls
    trajectories = PROMPTS_PER_WORKER * GROUP * workers
    wall = statistics.median(t[0] for t in timed)
    cpu = statistics.median(t[1] for t in timed)
    return {"workers": workers, "trajectories_per_step": trajectories, "steps_timed": len(timed),
            "wall_s_per_step": wall, "cpu_s_per_step": cpu, "cpu_ms_per_trajectory": 1000 * cpu / trajectories,
            "wall_ms_per_trajectory": 1000 * wall / trajectories, "start_seconds": start_seconds,
            "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="8,32,64")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sizes = [int(w) for w in args.workers.split(",")]
    ray.init(address="local", num_cpus=max(sizes) + 4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="fleet-", dir="/tmp"))
    rows = [run_fleet(w, args.steps) for w in sizes]
    ray.shutdown()
    print(f"\nController loop vs rollout fleet size ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}):")
    print(f"{'workers':>8} {'traj/step':>10} {'wall s/step':>12} {'cpu s/step':>11} {'cpu ms/traj':>12} "
          f"{'wall ms/traj':>13} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['workers']:>8} {r['trajectories_per_step']:>10} {r['wall_s_per_step']:>12.3f} "
              f"{r['cpu_s_per_step']:>11.3f} {r['cpu_ms_per_trajectory']:>12.3f} {r['wall_ms_per_trajectory']:>13.3f} "
              f"{r['driver_peak_rss_mb']:>12.0f}")
    ratio = rows[-1]["cpu_ms_per_trajectory"] / rows[0]["cpu_ms_per_trajectory"]
    wall_ratio = rows[-1]["wall_ms_per_trajectory"] / rows[0]["wall_ms_per_trajectory"]
    print(f"per-trajectory controller CPU, {sizes[-1]} vs {sizes[0]} workers: {ratio:.2f}x (goal <= {GOAL}x); "
          f"wall: {wall_ratio:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cores": os.cpu_count(), "load_average": os.getloadavg()[0],
                                               "fleets": rows, "cpu_ratio": ratio, "wall_ratio": wall_ratio,
                                               "goal": GOAL}, indent=2))


if __name__ == "__main__":
    main()
