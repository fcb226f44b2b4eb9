"""Pipeline benchmark: does asynchronous rollout (max_staleness k) overlap generation and training?

Runs the embedded default (shortened, a few settings scaled so a rollout and a learner step take
similar time) once per k in --staleness, in one process, and reports steps per minute, the speed-up
over k = 0 against the issue's goal (1.6x at k = 1), and the learner's and rollout workers' idle
fractions (`perf/learner_idle`, `perf/rollout_idle` of metrics.jsonl, averaged over the timed steps).

--disjoint gives the learner and the rollout worker disjoint cores (CPU affinity, one thread
each: learner on core 0, the rollout worker on core 1, controller and verifier unpinned), as
separate GPUs would be. Without it every actor shares every core, and overlap cannot gain much on
a 2-core machine: that is the shared-machine figure, not the pipeline's.

    python benchmarks/pipeline.py --disjoint --json benchmarks/results/pipeline.json

The first timed steps include start-up effects and are dropped (--skip). Compare the rows of one
run with each other (ratios), not with another machine. Weight-sync cost is measured by
benchmarks/weight_sync.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

from cluster.config import load_config  # noqa: E402

GOAL_SPEEDUP, GOAL_LEARNER_IDLE = 1.6, 0.10


def run_loop(max_staleness: int, args: argparse.Namespace, out_dir: str) -> dict:
    from cluster.launch import train

    overrides = [
        f"run_name=pipeline-k{max_staleness}", f"output_dir={out_dir}", f"trainer.max_staleness={max_staleness}",
        f"trainer.total_steps={args.steps}", "warmup.steps=20", "trainer.eval_limit=16",
        "rollout.num_workers=1", f"learner.n_t={args.n_t}", f"rollout.group_size={args.group_size}",
    ]
    if args.disjoint:
        overrides += ["learner.cpu_affinity=[0]", "learner.num_threads=1", "learner.num_cpus=1",
                      "rollout.cpu_affinity=[1]", "rollout.num_threads=1", "rollout.num_cpus=1",
                      "rewards.num_cpus=0"]
    config = load_config(None, overrides)
    started = time.perf_counter()
    train(config)
    wall_total = time.perf_counter() - started
    records = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "perf/learner_idle" in r][args.skip:]
    wall = sum(r["time/step"] for r in timed)
    return {
        "max_staleness": max_staleness,
        "steps_timed": len(timed),
        "steps_per_minute": 60 * len(timed) / wall,
        "learner_idle": statistics.mean(r["perf/learner_idle"] for r in timed),
        # Reported k steps late (the window it is for is then complete: cluster/loop.py IdleClock).
        "rollout_idle": statistics.mean(r["perf/rollout_idle"] for r in timed if "perf/rollout_idle" in r),
        "learner_step_seconds": statistics.mean(r["perf/step_seconds"] for r in timed),
        "rollout_seconds": statistics.mean(r["perf/rollout_busy_seconds"] for r in timed),
        "staleness_mean": statistics.mean(r["rollout/staleness_mean"] for r in timed),
        "run_seconds_total": wall_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=2, help="first timed steps to drop (start-up)")
    parser.add_argument("--staleness", default="0,1,2")
    parser.add_argument("--n-t", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--disjoint", action="store_true", help="learner on core 0, rollout on core 1")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.steps <= args.skip + 2:
        parser.error(f"--steps {args.steps} leaves too few timed steps after --skip {args.skip}")
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    with tempfile.TemporaryDirectory() as out_dir:
        loops = [run_loop(int(k), args, out_dir) for k in args.staleness.split(",")]
    ray.shutdown()

    base = loops[0]["steps_per_minute"]
    mode = "disjoint cores (learner core 0, rollout core 1)" if args.disjoint else "shared cores"
    print(f"\nLoop, embedded default shortened, {mode}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}:")
    print(f"{'k':>2} {'steps/min':>10} {'speed-up':>9} {'vs goal':>8} {'learner idle':>13} {'rollout idle':>13} "
          f"{'learner s':>10} {'rollout s':>10} {'staleness':>10}")
    for r in loops:
        r["speedup"] = r["steps_per_minute"] / base
        print(f"{r['max_staleness']:>2} {r['steps_per_minute']:>10.2f} {r['speedup']:>8.2f}x "
              f"{r['speedup'] / GOAL_SPEEDUP:>7.2f}x {r['learner_idle']:>13.2f} {r['rollout_idle']:>13.2f} "
              f"{r['learner_step_seconds']:>10.2f} {r['rollout_seconds']:>10.2f} {r['staleness_mean']:>10.2f}")
    print(f"goal: >= {GOAL_SPEEDUP}x at k = 1 with learner idle < {GOAL_LEARNER_IDLE:.0%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"mode": mode, "cores": os.cpu_count(),
                                               "load_average": os.getloadavg()[0], "args": vars(args),
                                               "loop": loops}, indent=2))


if __name__ == "__main__":
    main()
