"""Sandboxed code runs per second: a trivial program and a real HumanEval solution, 1 and N workers.

Each worker is a thread calling CodeSandbox.run in a loop (the verifier's pattern); the same jobs
also run through the rlimits-only path (allow_unsandboxed, what `allow_unsandboxed=True` costs)
so the table shows the sandbox's overhead measured side by side, and a floor row (the same
sandbox running `python -c pass`, no harness) shows what the harness itself costs.

    python benchmarks/sandbox_throughput.py --seconds 5 --workers 1 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.sandbox import CodeSandbox, SandboxConfig  # noqa: E402
from rewards.sandbox.launcher import sandbox_argv  # noqa: E402
from rewards.sandbox.supervisor import run_process  # noqa: E402
from rewards.tasks.humaneval import HumanEvalTask, build_program, prompt_code  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rewards" / "code_rows.json"


def jobs() -> dict[str, tuple[str, list[str], tuple[str, ...]]]:
    """name -> (program, tests, guard), built exactly as the HumanEval task builds them."""
    rec = json.loads(FIXTURE.read_text())["humaneval"][0]
    prompt, entry = prompt_code(rec["row"]), rec["entry_point"]
    program = build_program(rec["solution_body"], prompt, entry)
    check = rec["row"]["reward_model"]["ground_truth"]
    return {
        "trivial": ("def f(x):\n    return x + 1\n", ["assert f(1) == 2"], ("f",)),
        "humaneval/0": (program, [f"{check}\ncheck({entry})\n"], (entry,)),
    }


def run_for(seconds: float, workers: int, one_run) -> dict:
    """Call `one_run()` (True when the run went as expected) in a loop on `workers` threads for
    `seconds`; runs per second over all of them."""
    counts, bad, stop = [0] * workers, [0] * workers, time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            bad[i] += not one_run()
            counts[i] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return {"runs": sum(counts), "seconds": round(elapsed, 3),
            "runs_per_s": round(sum(counts) / elapsed, 1), "not_ok": sum(bad)}


def measure(box: CodeSandbox, job: tuple, workers: int, seconds: float,
            unsandboxed: bool) -> dict:
    program, tests, guard = job

    def one_run() -> bool:
        r = box.run(program, tests, deadline_s=10, allow_unsandboxed=unsandboxed, guard=guard)
        return r.status == "ok"

    return run_for(seconds, workers, one_run)


def measure_floor(box: CodeSandbox, workers: int, seconds: float) -> dict:
    """Same prlimit+bwrap+fresh uid, running `python -I -S -c pass`: the cost without a harness."""

    def one_run() -> bool:
        lease = box.pool.acquire() if box.pool else None
        uid = lease.uid if lease else os.getuid()
        argv = sandbox_argv(box.config, uid=uid, cpu_seconds=10, nproc=box.config.nproc)
        run_process(argv[:-1] + ["-c", "pass"], b"", deadline_s=10, user=uid if lease else None)
        if lease:
            box.pool.release(lease)
        return True  # the floor counts runs; it does not judge them

    return run_for(seconds, workers, one_run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per cell")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-baseline", action="store_true", help="skip the rlimits-only rows")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    sandboxed = CodeSandbox()
    ok, reason = sandboxed.availability()
    if not ok:
        sys.exit(f"sandbox unavailable: {reason}")
    # A sandbox whose probe fails (bad interpreter path) runs the rlimits-only path when allowed.
    baseline = CodeSandbox(SandboxConfig(python="/nonexistent/bin/python3"))
    baseline.available()
    modes = [("bwrap+prlimit+uid", sandboxed, False)]
    if not args.no_baseline:
        modes.append(("prlimit only", baseline, True))
    rows = []
    for w in args.workers:
        res = measure_floor(sandboxed, w, args.seconds)
        rows.append({"job": "python -c pass", "mode": "bwrap+prlimit+uid, no harness",
                     "workers": w, **res})
        print(f"floor: workers={w}  {res['runs_per_s']:7.1f} runs/s", flush=True)
    for job_name, job in jobs().items():
        for mode, box, unsandboxed in modes:
            box.run(job[0], job[1], deadline_s=10, allow_unsandboxed=unsandboxed)  # warm up
            for w in args.workers:
                res = measure(box, job, w, args.seconds, unsandboxed)
                rows.append({"job": job_name, "mode": mode, "workers": w, **res})
                print(f"{job_name:12s} {mode:18s} workers={w}  {res['runs_per_s']:7.1f} runs/s"
                      f"  ({res['runs']} runs, {res['not_ok']} not ok)", flush=True)
    print("\n| job | mode | workers | runs/s | runs | not ok |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['job']} | {r['mode']} | {r['workers']} | {r['runs_per_s']} | {r['runs']} "
              f"| {r['not_ok']} |")
    meta = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_after": os.getloadavg(),
            "root": os.geteuid() == 0, "sandbox": reason, "seconds_per_cell": args.seconds,
            "check": HumanEvalTask.name}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
