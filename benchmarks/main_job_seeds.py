"""The main job over several seeds: held-out accuracy before and after RL, and the spread.

Runs `python -m cluster.launch run_name=seed<S> seed=<S> output_dir=OUT` (the embedded default,
`configs/tiny-sudoku.yaml`) for each seed, `--parallel` at a time, each with its own local Ray,
then reads every run's summary.json and prints the table in the README. `--aggregate` skips the
runs and only reads OUT.

    python benchmarks/main_job_seeds.py --seeds 0,1,2 --out runs/seeds --json benchmarks/results/main_job_seeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETS = ("test", "heldout")


def run_seeds(seeds: list[int], out: Path, parallel: int, overrides: list[str]) -> dict[int, float]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    pending, running, seconds = list(seeds), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            seed = pending.pop(0)
            log = open(out / f"seed{seed}.log", "w")
            cmd = [sys.executable, "-m", "cluster.launch", f"run_name=seed{seed}", f"seed={seed}",
                   f"output_dir={out}", *overrides]
            running[seed] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), time.time())
        for seed, (proc, started) in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode != 0:
                    raise RuntimeError(f"seed {seed} failed (exit {proc.returncode}); see {out}/seed{seed}.log")
                seconds[seed] = time.time() - started
                del running[seed]
        time.sleep(2)
    return seconds


def table(out: Path, seeds: list[int], seconds: dict[int, float]) -> tuple[str, dict]:
    rows, record = [], {"seeds": {}}
    for seed in seeds:
        summary = json.loads((out / f"seed{seed}" / "summary.json").read_text())
        record["seeds"][seed] = {"before": summary["before"], "after": summary["after"], "seconds": seconds.get(seed)}
    lines = ["| seed | " + " | ".join(f"{s} before | {s} after | {s} gain" for s in SETS) + " |",
             "|---|" + "---|---|---|" * len(SETS)]
    for seed in seeds:
        s = record["seeds"][seed]
        cells = []
        for name in SETS:
            b, a = 100 * s["before"][f"{name}_accuracy"], 100 * s["after"][f"{name}_accuracy"]
            cells += [f"{b:.1f}%", f"{a:.1f}%", f"{a - b:+.1f}"]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    cells = []
    for name in SETS:
        before = [100 * record["seeds"][x]["before"][f"{name}_accuracy"] for x in seeds]
        after = [100 * record["seeds"][x]["after"][f"{name}_accuracy"] for x in seeds]
        gains = [a - b for a, b in zip(after, before, strict=True)]
        sd = statistics.stdev if len(seeds) > 1 else (lambda _: 0.0)
        cells += [f"{statistics.mean(before):.1f} ± {sd(before):.1f}", f"{statistics.mean(after):.1f} ± {sd(after):.1f}",
                  f"{statistics.mean(gains):+.1f} (min {min(gains):+.1f})"]
        record[name] = {"before_mean": statistics.mean(before), "after_mean": statistics.mean(after),
                        "gain_mean": statistics.mean(gains), "gain_min": min(gains),
                        "before_sd": sd(before), "after_sd": sd(after)}
    lines.append("| mean ± sd | " + " | ".join(cells) + " |")
    rows = "\n".join(lines)
    return rows, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (each starts its own Ray)")
    parser.add_argument("--aggregate", action="store_true", help="only read the summaries already in --out")
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds = {} if args.aggregate else run_seeds(seeds, out, args.parallel, args.overrides)
    text, record = table(out, seeds, seconds)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
