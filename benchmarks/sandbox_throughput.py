"""Sandboxed code runs per second: a trivial program and a real HumanEval solution, 1 and N workers,
against the goal of 100 runs/s for the trivial program on 2 workers with full isolation.

Each worker is a thread calling CodeSandbox.run in a loop (the verifier's pattern). Modes:
- `bwrap+prlimit+uid, prestart`: the default sandbox, which starts the next sandbox while the
  current run goes on (rewards/sandbox/warm.py);
- `bwrap+prlimit+uid, no prestart`: the same isolation, each sandbox started when its run begins;
- `bwrap+prlimit+uid, prestart, no memory cgroup` (where the sandbox has one): the default without
  its per-run memory cgroup, IPC and mount namespaces (rewards/sandbox/memory.py), i.e. what that
  bound costs;
- `prlimit only`: the rlimits-only path (what `allow_unsandboxed=True` costs).
Floor rows bound what any harness could reach here: the bare interpreter (`python -I -S -c pass`,
no sandbox), the bare sandbox (prlimit + bwrap + fresh uid running /usr/bin/true) and both
together (the sandbox running `python -I -S -c pass`, no harness). Every row also gives the CPU
time per run (this process and every child it reaped, all cores together) and the rate that CPU
time allows on this machine's cores: unlike runs/s, that figure barely moves when other
programs share the machine, but it leaves out kernel work charged to no process (network
namespaces are torn down by a kernel worker). `machine_busy_ms_per_run` includes that, and
everything else the machine ran meanwhile: it is the honest figure on an idle machine only. The
load average is recorded before and after.

    python benchmarks/sandbox_throughput.py --seconds 5 --workers 1 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.sandbox import CodeSandbox, SandboxConfig  # noqa: E402
from rewards.sandbox.launcher import pick_interpreter, sandbox_argv  # noqa: E402
from rewards.sandbox.supervisor import run_process  # noqa: E402
from rewards.tasks.humaneval import HumanEvalTask, build_program, prompt_code  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rewards" / "code_rows.json"
GOAL_RUNS_PER_S = 100.0  # trivial program, 2 workers, full isolation (issue 14)
GOAL_WORKERS = 2


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
    `seconds`; runs per second over all of them, and CPU time per run."""
    counts, bad, stop = [0] * workers, [0] * workers, time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            bad[i] += not one_run()
            counts[i] += 1

    cpu0, busy0, start = os.times(), machine_busy_s(), time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu1, busy1 = time.monotonic() - start, os.times(), machine_busy_s()
    runs = max(sum(counts), 1)
    cpu = sum(getattr(cpu1, f) - getattr(cpu0, f)
              for f in ("user", "system", "children_user", "children_system"))
    cpu_ms = 1000 * cpu / runs
    return {"runs": sum(counts), "seconds": round(elapsed, 3),
            "runs_per_s": round(sum(counts) / elapsed, 1), "not_ok": sum(bad),
            "cpu_ms_per_run": round(cpu_ms, 2),
            "cpu_bound_runs_per_s": round(1000 * (os.cpu_count() or 1) / max(cpu_ms, 1e-9), 1),
            "machine_busy_ms_per_run": round(1000 * (busy1 - busy0) / runs, 2)}


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat, every core, every process, and
    kernel work no process is charged for, such as network-namespace teardown)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measure(box: CodeSandbox, job: tuple, workers: int, seconds: float,
            unsandboxed: bool) -> dict:
    program, tests, guard = job

    def one_run() -> bool:
        r = box.run(program, tests, deadline_s=10, allow_unsandboxed=unsandboxed, guard=guard)
        return r.status == "ok"

    return run_for(seconds, workers, one_run)


def measure_floor(box: CodeSandbox, workers: int, seconds: float, command: list[str],
                  sandboxed: bool) -> dict:
    """`command` alone (sandboxed: under prlimit + bwrap + a fresh uid), no harness, no job."""

    def one_run() -> bool:
        if not sandboxed:
            return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  env={"PATH": "/usr/bin:/bin"}).returncode == 0
        lease = box.pool.acquire() if box.pool else None
        uid = lease.uid if lease else os.getuid()
        argv = sandbox_argv(box.config, uid=uid, cpu_seconds=10, nproc=box.config.nproc)
        python_at = argv.index(pick_interpreter(box.config)[0], argv.index("bwrap"))
        out = run_process(argv[:python_at] + command, b"", deadline_s=10,
                          user=uid if lease else None)
        if lease:  # bwrap exited 0: pid 1 was reaped, the namespace is empty (see runner.py)
            box.pool.release(lease, known_clean=out.returncode == 0)
        return out.returncode == 0

    return run_for(seconds, workers, one_run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per cell")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-baseline", action="store_true", help="skip the rlimits-only rows")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor rows")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    load_before = os.getloadavg()

    sandboxed = CodeSandbox()
    ok, reason = sandboxed.availability()
    if not ok:
        sys.exit(f"sandbox unavailable: {reason}")
    cold = CodeSandbox(SandboxConfig(prestart=0))
    cold.available()
    # A sandbox whose probe fails (bad interpreter path) runs the rlimits-only path when allowed.
    baseline = CodeSandbox(SandboxConfig(python="/nonexistent/bin/python3"))
    baseline.available()
    modes = [("bwrap+prlimit+uid, prestart", sandboxed, False),
             ("bwrap+prlimit+uid, no prestart", cold, False)]
    # The same sandbox without its per-run memory cgroup and namespaces (rewards/sandbox/memory.py):
    # what that bound costs. Only where the sandbox has one (root, cgroup v1).
    if "memory=cgroup" in reason:
        no_memcg = CodeSandbox(SandboxConfig(cgroup_root="/nonexistent", allow_no_memory_cgroup=True))
        if no_memcg.available():
            modes.append(("bwrap+prlimit+uid, prestart, no memory cgroup", no_memcg, False))
    if not args.no_baseline:
        modes.append(("prlimit only", baseline, True))
    python = pick_interpreter(sandboxed.config)[0]
    floors = [("python -I -S -c pass", "bare interpreter, no sandbox", [python, "-I", "-S", "-c",
                                                                        "pass"], False),
              ("/usr/bin/true", "prlimit+bwrap+uid, no harness", ["/usr/bin/true"], True),
              ("python -I -S -c pass", "prlimit+bwrap+uid, no harness",
               [python, "-I", "-S", "-c", "pass"], True)]
    rows = []
    for job_name, mode, command, in_sandbox in ([] if args.no_floor else floors):
        for w in args.workers:
            res = measure_floor(cold, w, args.seconds, command, in_sandbox)
            rows.append({"job": job_name, "mode": mode, "workers": w, **res})
            print(f"floor {job_name:22s} {mode:32s} workers={w}  {res['runs_per_s']:7.1f} runs/s"
                  f"  {res['cpu_ms_per_run']:6.2f} ms CPU/run", flush=True)
    for job_name, job in jobs().items():
        for mode, box, unsandboxed in modes:
            box.run(job[0], job[1], deadline_s=10, allow_unsandboxed=unsandboxed)  # warm up
            for w in args.workers:
                res = measure(box, job, w, args.seconds, unsandboxed)
                rows.append({"job": job_name, "mode": mode, "workers": w, **res})
                print(f"{job_name:12s} {mode:32s} workers={w}  {res['runs_per_s']:7.1f} runs/s"
                      f"  {res['cpu_ms_per_run']:6.2f} ms CPU/run ({res['runs']} runs, "
                      f"{res['not_ok']} not ok)", flush=True)
    load_after = os.getloadavg()
    print("\n| job | mode | workers | runs/s | CPU ms/run | CPU-bound runs/s | machine busy ms/run "
          "| runs | not ok |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['job']} | {r['mode']} | {r['workers']} | {r['runs_per_s']} "
              f"| {r['cpu_ms_per_run']} | {r['cpu_bound_runs_per_s']} "
              f"| {r['machine_busy_ms_per_run']} | {r['runs']} | {r['not_ok']} |")
    goal_row = next((r for r in rows if r["job"] == "trivial" and r["workers"] == GOAL_WORKERS
                     and r["mode"] == modes[0][0]), None)
    goal = None
    if goal_row is not None:
        goal = {"runs_per_s": goal_row["runs_per_s"], "goal_runs_per_s": GOAL_RUNS_PER_S,
                "ratio": round(goal_row["runs_per_s"] / GOAL_RUNS_PER_S, 2),
                "cpu_bound_ratio": round(goal_row["cpu_bound_runs_per_s"] / GOAL_RUNS_PER_S, 2)}
        print(f"\ngoal: trivial, {modes[0][0]}, {GOAL_WORKERS} workers: "
              f"{goal['runs_per_s']} runs/s = {goal['ratio']:.2f}x the {GOAL_RUNS_PER_S:.0f} "
              f"runs/s goal (CPU-bound rate {goal_row['cpu_bound_runs_per_s']} runs/s = "
              f"{goal['cpu_bound_ratio']:.2f}x); load average before {load_before[0]:.2f}, "
              f"after {load_after[0]:.2f}")
    meta = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "sandbox_python": python, "loadavg_before": load_before, "loadavg_after": load_after,
            "root": os.geteuid() == 0, "sandbox": reason, "seconds_per_cell": args.seconds,
            "check": HumanEvalTask.name, "prestart": sandboxed.config.prestart}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "goal": goal, "rows": rows},
                                              indent=1))
    for box in (sandboxed, cold, baseline):
        box.warm.close()


if __name__ == "__main__":
    main()
