"""Countdown: combine the given numbers with + - * / to reach a target.

Presets:
- `bgpo` and `d1`: BGPO's and d1's rule, which is one rule (`countdown_reference`): the last
  `<answer>(.*?)</answer>` match, its digit runs must be the puzzle's numbers, Python `eval` within
  1e-5 of the target: 1.0; answer present otherwise: 0.1; none: 0. Their `eval` is replaced by an
  eval-compatible evaluator that refuses only astronomically large powers.
- `lenient`: this project's rule: the last complete `<answer>...</answer>` (`last_tag`), parsed
  by the bounded exact evaluator in `rewards.arith` (integer literals, + - * /, Fractions): it
  must use exactly the given multiset of numbers and equal the target: 1.0 (ok); present but
  malformed, wrong or using other numbers: 0.1 (wrong); none: 0. `2.5` or `**` are malformed
  here, while the references read `2.5` as the numbers 2 and 5 and allow `**` and `//`.
- `compact`: the whole completion (stripped) is the expression, scored as `lenient`. Used by the
  tiny built-in model, which emits no tags. An empty completion is no_answer.

Rows: `extra_info.numbers` (a list, or its JSON/Python text as in d1's parquet files) and
`reward_model.ground_truth` or `extra_info.target` (the target).
"""

from __future__ import annotations

import json
from collections import Counter

from rewards.arith import ArithError, evaluate, literals, parse_expression
from rewards.tasks import countdown_reference
from rewards.tasks.answers import last_tag
from rewards.tasks.base import COMPACT_SEPARATOR, Task
from rewards.types import RewardResult, ScoringOptions

FORMAT_SCORE = 0.1  # reward for an answer that is present but wrong (TinyZero/d1 convention)


def numbers_and_target(item: dict) -> tuple[list[int], int]:
    """Read the puzzle from a row; raises KeyError/ValueError/TypeError if it is malformed."""
    extra = item.get("extra_info") or {}
    numbers = extra["numbers"]
    if isinstance(numbers, str):
        numbers = json.loads(numbers)
    numbers = [int(n) for n in numbers]
    target = extra.get("target")
    if target is None:
        target = item["reward_model"]["ground_truth"]
    return numbers, int(str(target).strip())


class CountdownTask(Task):
    """Countdown with 3 or 4 numbers."""

    name = "countdown"
    presets = ("bgpo", "d1", "lenient", "compact")

    def compact_prompt(self, item: dict) -> str:
        numbers, target = numbers_and_target(item)
        return f"{' '.join(str(n) for n in numbers)}>{target}{COMPACT_SEPARATOR}"

    def compact_target(self, item: dict) -> str:
        extra = item.get("extra_info") or {}
        if "solution" not in extra:
            raise ValueError("countdown rows need extra_info.solution for a warm start")
        return str(extra["solution"])

    def score(self, completion: str, item: dict, *, preset: str, options: ScoringOptions) -> RewardResult:
        try:
            numbers, target = numbers_and_target(item)
        except (KeyError, ValueError, TypeError) as exc:
            return RewardResult(0.0, "error", f"malformed item: {type(exc).__name__}: {exc}")
        if preset in ("bgpo", "d1"):
            return countdown_reference.score(completion, numbers, target)
        if preset == "compact":
            answer = completion.strip() or None
        else:
            answer = last_tag(completion, "answer")
        if answer is None:
            return RewardResult(0.0, "no_answer", "no answer found")
        return score_expression(answer, numbers, target)


def score_expression(answer: str, numbers: list[int], target: int) -> RewardResult:
    """1.0 if `answer` uses exactly `numbers` and equals `target`, else FORMAT_SCORE."""
    extra = {"answer": answer[:200]}
    try:
        tree = parse_expression(answer)
    except ArithError as exc:
        return RewardResult(FORMAT_SCORE, "wrong", f"invalid expression: {exc}", extra=extra)
    used = literals(tree)
    if Counter(used) != Counter(numbers):
        return RewardResult(FORMAT_SCORE, "wrong", f"uses {sorted(used)[:10]}, need {sorted(numbers)}",
                            extra=extra)
    try:
        value = evaluate(tree)
    except ArithError as exc:
        return RewardResult(FORMAT_SCORE, "wrong", str(exc), extra=extra)
    extra["value"] = str(value)
    if value == target:
        return RewardResult(1.0, "ok", extra=extra)
    return RewardResult(FORMAT_SCORE, "wrong", f"evaluates to {value}, target {target}", extra=extra)
