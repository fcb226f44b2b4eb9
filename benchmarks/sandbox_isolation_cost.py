"""What the code sandbox's isolation costs: this tree against an earlier commit, side by side.

Runs benchmarks/sandbox_throughput.py of each tree in alternation (before, after, before, ...),
`--rounds` times each, so both see the same machine load, and prints for every row (job, mode,
workers) the median runs/s and CPU ms per run of each tree, their ratio, and the goal row
(trivial program, full isolation with prestart, 2 workers) against 100 runs/s. The earlier tree
is checked out with `git worktree` into a temporary folder (removed at the end).

    python benchmarks/sandbox_isolation_cost.py --before fcb2fd2 --rounds 3 --seconds 3 \
        --json benchmarks/results/sandbox_isolation_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path("benchmarks") / "sandbox_throughput.py"
GOAL_ROW = ("trivial", "bwrap+prlimit+uid, prestart", 2)
GOAL_RUNS_PER_S = 100.0


def run_tree(tree: Path, seconds: float, workers: list[int]) -> list[dict]:
    """One run of the tree's own throughput benchmark (its code imported, not ours)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(tree / SCRIPT), "--seconds", str(seconds),
                        "--workers", *map(str, workers), "--no-floor", "--no-baseline",
                        "--json", out.name], cwd=tree, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())["rows"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bgpo-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), args.before],
                       cwd=ROOT, check=True)
        try:
            samples: dict[str, dict[tuple, list[dict]]] = {"before": {}, "after": {}}
            for r in range(args.rounds):
                for name, tree in (("before", before), ("after", ROOT)):
                    for row in run_tree(tree, args.seconds, args.workers):
                        key = (row["job"], row["mode"], row["workers"])
                        samples[name].setdefault(key, []).append(row)
                    print(f"round {r + 1}/{args.rounds} {name} done", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT,
                           check=False)
    load_after = os.getloadavg()
    table = []
    for key in samples["after"]:  # rows only one tree has (a mode added since) get None
        row = {"job": key[0], "mode": key[1], "workers": key[2]}
        for name in ("before", "after"):
            rows = samples[name].get(key, [])
            row[f"{name}_runs_per_s"] = statistics.median(x["runs_per_s"] for x in rows) if rows else None
            row[f"{name}_cpu_ms_per_run"] = (statistics.median(x["cpu_ms_per_run"] for x in rows)
                                             if rows else None)
            row[f"{name}_not_ok"] = sum(x["not_ok"] for x in rows)
        both = row["before_runs_per_s"] is not None
        row["runs_per_s_ratio"] = round(row["after_runs_per_s"] / row["before_runs_per_s"], 3) if both else None
        row["cpu_ms_delta"] = (round(row["after_cpu_ms_per_run"] - row["before_cpu_ms_per_run"], 2)
                               if both else None)
        table.append(row)
    print(f"\nbefore = {args.before}, after = {head} (+ uncommitted changes, if any); median of "
          f"{args.rounds} alternating rounds, {args.seconds:g} s per cell; load average "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} cores\n")
    print("| job | mode | workers | runs/s before | runs/s after | after/before | CPU ms/run "
          "before | CPU ms/run after | not ok (b/a) |\n|---|---|---|---|---|---|---|---|---|")
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    for r in table:
        print(f"| {r['job']} | {r['mode']} | {r['workers']} | {num(r['before_runs_per_s'], '.1f')} | "
              f"{num(r['after_runs_per_s'], '.1f')} | {num(r['runs_per_s_ratio'], '.2f')} | "
              f"{num(r['before_cpu_ms_per_run'], '.2f')} | {num(r['after_cpu_ms_per_run'], '.2f')} | "
              f"{r['before_not_ok']}/{r['after_not_ok']} |")
    goal = next((r for r in table if (r["job"], r["mode"], r["workers"]) == GOAL_ROW), None)
    if goal and goal["before_runs_per_s"]:
        print(f"\ngoal row ({GOAL_ROW[0]}, {GOAL_ROW[1]}, {GOAL_ROW[2]} workers): "
              f"{goal['after_runs_per_s']:.1f} runs/s = "
              f"{goal['after_runs_per_s'] / GOAL_RUNS_PER_S:.2f}x the goal of "
              f"{GOAL_RUNS_PER_S:g} (before: {goal['before_runs_per_s'] / GOAL_RUNS_PER_S:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "before": args.before, "after": head, "rounds": args.rounds,
            "seconds_per_cell": args.seconds, "cpu_count": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": load_after, "rows": table,
            "samples": {n: {" / ".join(map(str, k)): v for k, v in s.items()}
                        for n, s in samples.items()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
