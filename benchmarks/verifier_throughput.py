"""Verifier throughput: completions scored per second per task, at VerifierWorker concurrency
1 and 2, on real dataset rows.

Completions are synthetic but realistic: half carry the gold answer, half a wrong one (for math
the gold answer of another row, which usually needs math-verify in an isolation child; for
code a stub that fails its tests in the sandbox). The code rows ship no solutions, so the
correct code half cycles through the rows of tests/fixtures/rewards/code_rows.json, which carry
known-correct ones (4 per task): passing programs run every test. Prints a table and writes JSON
with --json.

    .venv/bin/python benchmarks/verifier_throughput.py --n 200 --json runs/verifier.json

Reads ../shared/data by default (benchmarks may; tests may not).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.datasets import load_rows  # noqa: E402
from rewards.generators import reachable  # noqa: E402
from rewards.tasks import UnknownTaskError, get_task  # noqa: E402
from rewards.types import ScoringOptions  # noqa: E402
from rewards.verifier import VerifierWorker  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CODE_SOLUTIONS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rewards" / "code_rows.json"
FILES = {"gsm8k": "test/gsm8k.parquet", "math": "test/math500.parquet",
         "countdown": "test/countdown.parquet", "sudoku": "test/sudoku.parquet",
         "humaneval": "test/humaneval.parquet", "mbpp": "test/mbpp.parquet"}


def completion_for(task: str, row: dict, other: dict, correct: bool) -> str:
    """A plausible completion: the right answer, or a wrong one of the same shape."""
    gold = row["reward_model"]["ground_truth"]
    if task in ("gsm8k", "math"):
        answer = gold if correct else other["reward_model"]["ground_truth"]
        return f"Let me think step by step. ... So the answer is $\\boxed{{{answer}}}$."
    if task == "countdown":
        numbers = json.loads(row["extra_info"]["numbers"])
        expr = reachable(numbers).get(Fraction(int(gold))) if correct else None
        return f"<reasoning>\n...\n</reasoning>\n<answer>\n{expr or '+'.join(map(str, numbers))}\n</answer>"
    if task == "sudoku":
        grid = gold if correct else gold[::-1]
        return f"<reasoning>\n...\n</reasoning>\n<answer>\n{grid}\n</answer>"
    if task == "humaneval":
        from rewards.tasks.humaneval import entry_point, prompt_code  # noqa: PLC0415

        name = entry_point(prompt_code(row)) or "f"
        return f"```python\ndef {name}(*args, **kwargs):\n    return None\n```"
    from rewards.tasks.mbpp import entry_point  # noqa: PLC0415

    return f"```python\ndef {entry_point(row) or 'f'}(*args, **kwargs):\n    return None\n```"


def solved_code(task: str) -> list[tuple[dict, str]]:
    """(row, correct completion) pairs from the committed fixture."""
    from rewards.tasks.humaneval import prompt_code  # noqa: PLC0415

    records = json.loads(CODE_SOLUTIONS.read_text())[task]
    if task == "humaneval":
        return [(r["row"], f"```python\n{prompt_code(r['row']) + r['solution_body']}```") for r in records]
    return [(r["row"], f"```python\n{r['solution']}```") for r in records]


def requests_for(task: str, data_dir: Path, n: int, seed: int) -> list[dict]:
    rows = load_rows(data_dir / FILES[task])
    rng = random.Random(seed)
    solved = solved_code(task) if task in ("humaneval", "mbpp") else None
    requests = []
    for i in range(n):
        row, correct = rng.choice(rows), i % 2 == 0
        if solved and correct:
            row, completion = solved[(i // 2) % len(solved)]
        else:
            completion = completion_for(task, row, rng.choice(rows), correct)
        requests.append({"task": task, "item": row, "completion": completion})
    return requests


def measure(worker: VerifierWorker, warmup: list[dict], requests: list[dict], batch: int) -> dict:
    # Warm up on other rows: children finish their lazy imports, but the measured rows' gold
    # answers are not already in the children's parse caches.
    worker.score_batch(warmup)
    statuses: Counter = Counter()
    methods: Counter = Counter()  # for math: how many answers needed math-verify in a child
    start = time.monotonic()
    for i in range(0, len(requests), batch):
        for result in worker.score_batch(requests[i:i + batch]):
            statuses[result.status] += 1
            if "method" in result.extra:
                methods[result.extra["method"]] += 1
    seconds = time.monotonic() - start
    return {"items": len(requests), "seconds": round(seconds, 3),
            "items_per_s": round(len(requests) / seconds, 1), "statuses": dict(statuses),
            "methods": dict(methods)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=200, help="completions per task")
    parser.add_argument("--code-n", type=int, default=100, help="completions per code task")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(FILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)

    tasks = []
    for task in args.tasks:
        try:
            get_task(task)
        except UnknownTaskError as exc:
            print(f"skipping {task}: {exc}", file=sys.stderr)
            continue
        tasks.append(task)
    requests = {t: requests_for(t, args.data_dir, args.code_n if t in ("humaneval", "mbpp")
                                else args.n, args.seed) for t in tasks}
    warmups = {t: requests_for(t, args.data_dir, 16, args.seed + 1) for t in tasks}
    results = []
    # Concurrency in increasing order: the process-wide isolation pool only grows.
    for concurrency in sorted(args.concurrency):
        worker = VerifierWorker(f"bench-{concurrency}", max_concurrency=concurrency,
                                options=ScoringOptions())
        for task in tasks:
            row = {"task": task, "concurrency": concurrency,
                   **measure(worker, warmups[task], requests[task], args.batch)}
            results.append(row)
            print(f"{task:10s} c={concurrency}  {row['items_per_s']:9.1f} items/s  "
                  f"({row['items']} in {row['seconds']}s)  {row['statuses']} {row['methods'] or ''}", flush=True)
        worker.close()

    print(f"\n{'task':10s} " + " ".join(f"{'c=' + str(c):>10s}" for c in sorted(args.concurrency))
          + "   ratio")
    for task in tasks:
        rates = [r["items_per_s"] for r in results if r["task"] == task]
        ratio = f"{rates[-1] / rates[0]:6.2f}x" if len(rates) > 1 and rates[0] else ""
        print(f"{task:10s} " + " ".join(f"{x:10.1f}" for x in rates) + "   " + ratio)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.platform(), "python":
                                         platform.python_version(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
