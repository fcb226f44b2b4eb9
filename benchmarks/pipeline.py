"""Pipeline benchmark: throughput of the distributed loop and the cost of weight sync.

Part 1 runs the embedded default (shortened) twice in one process, with max_staleness 0
(synchronous) and 1 (rollout one version ahead, overlapping training), and reports steps per
minute and the fraction of wall time the learner and the rollout workers sit idle.
Part 2 pushes weights from a learner actor to 2 rollout actors for models of growing size, over
the bucketed torch.distributed broadcast (gloo on CPU) and over the object store (numpy buckets),
and reports seconds against model bytes.

    python benchmarks/pipeline.py --json benchmarks/results/pipeline.json

Both parts share the machine with whatever else runs on it: compare the rows of one run with
each other (ratios), not with another machine.
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


def run_loop(max_staleness: int, steps: int, out_dir: str) -> dict:
    from cluster.launch import train

    config = load_config(None, [
        f"run_name=pipeline-k{max_staleness}", f"output_dir={out_dir}", f"trainer.max_staleness={max_staleness}",
        f"trainer.total_steps={steps}", "warmup.steps=20", "trainer.eval_limit=16",
    ])
    started = time.perf_counter()
    train(config)
    wall_total = time.perf_counter() - started
    records = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_rec = [r for r in records if "train/loss" in r][1:]  # the first step includes start-up effects
    wall = sum(r["time/step"] for r in steps_rec)
    workers = config.rollout.num_workers
    return {
        "max_staleness": max_staleness,
        "steps_timed": len(steps_rec),
        "steps_per_minute": 60 * len(steps_rec) / wall,
        "learner_idle_fraction": 1 - sum(r["perf/step_seconds"] for r in steps_rec) / wall,
        "rollout_idle_fraction": 1 - sum(r["perf/rollout_busy_seconds"] for r in steps_rec) / (wall * workers),
        "weight_sync_seconds_mean": statistics.mean(r["perf/weight_sync_seconds"] for r in steps_rec),
        "staleness_mean": statistics.mean(r["rollout/staleness_mean"] for r in steps_rec),
        "run_seconds_total": wall_total,
    }


def sync_costs(sizes: list[tuple[int, int]], repeats: int) -> list[dict]:
    from cluster.actors import LearnerActor, RolloutActor
    from cluster.weight_sync import WeightPublisher

    rows = []
    for hidden, layers in sizes:
        cfg = load_config(None, [f"model.tiny.hidden_size={hidden}", f"model.tiny.num_layers={layers}",
                                 "model.tiny.num_heads=4", "run_name=sync-bench"]).model_dump(mode="json")
        learner = ray.remote(LearnerActor).options(num_cpus=0).remote(0, 1, cfg)
        ray.get(learner.init_group.remote("127.0.0.1", 0))
        receivers = {f"r{i}": ray.remote(RolloutActor).options(num_cpus=0).remote(f"r{i}", cfg) for i in range(2)}
        buckets = ray.get(learner.weight_plan.remote())
        nbytes = sum(b.nbytes for b in buckets)
        for backend in ("collective", "object_store"):
            publisher = WeightPublisher(learner, buckets, backend)
            publisher.push(receivers, 0)  # builds the group, warms up allocations
            times = []
            for version in range(1, repeats + 1):
                t0 = time.perf_counter()
                publisher.push(receivers, version)
                times.append(time.perf_counter() - t0)
            rows.append({"hidden": hidden, "layers": layers, "model_bytes": nbytes, "backend": backend,
                         "seconds_median": statistics.median(times), "seconds_min": min(times)})
        for actor in [learner, *receivers.values()]:
            ray.kill(actor)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="128x4,512x8,1024x8,1536x12", help="hidden x layers of the models for part 2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    with tempfile.TemporaryDirectory() as out_dir:
        loops = [run_loop(k, args.steps, out_dir) for k in (0, 1)]
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    syncs = sync_costs(sizes, args.repeats)
    ray.shutdown()

    print("\nLoop (embedded default, shortened):")
    print(f"{'max_staleness':>13} {'steps/min':>10} {'learner idle':>13} {'rollout idle':>13} {'staleness':>10} {'sync s':>8}")
    for r in loops:
        print(f"{r['max_staleness']:>13} {r['steps_per_minute']:>10.2f} {r['learner_idle_fraction']:>13.2f} "
              f"{r['rollout_idle_fraction']:>13.2f} {r['staleness_mean']:>10.2f} {r['weight_sync_seconds_mean']:>8.4f}")
    print(f"speed-up of max_staleness=1 over 0: {loops[1]['steps_per_minute'] / loops[0]['steps_per_minute']:.2f}x")
    print("\nWeight sync, learner -> 2 rollout actors (median of repeats):")
    print(f"{'model MB':>9} {'broadcast s':>12} {'object store s':>15} {'ratio':>7}")
    for size in sizes:
        pair = {r["backend"]: r for r in syncs if (r["hidden"], r["layers"]) == size}
        mb = pair["collective"]["model_bytes"] / 2**20
        b, o = pair["collective"]["seconds_median"], pair["object_store"]["seconds_median"]
        print(f"{mb:>9.1f} {b:>12.4f} {o:>15.4f} {o / b:>7.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"loop": loops, "weight_sync": syncs}, indent=2))


if __name__ == "__main__":
    main()
