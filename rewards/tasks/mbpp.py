"""MBPP: write a Python function; reward 1.0 iff all of the row's asserts pass in the sandbox.

Rows (d1/BGPO parquet): a 3-shot chat prompt whose last user message lists the task and its
asserts and whose last assistant message is "[BEGIN]\\n"; reward_model.ground_truth is a JSON
list of assert statements. The function name comes from the prompt's own asserts (the rows carry
no entry point); each assert is one test.
"""

from __future__ import annotations

import json
import re
import time

from rewards.tasks.base import Task
from rewards.tasks.code_common import failure, isolated, score_in_sandbox
from rewards.types import RewardResult, ScoringOptions

# The function under test is the first name called in an assert, past wrappers the MBPP tests
# use around it: `assert not f(..)`, `assert set(f(..)) == ..`, `assert math.isclose(f(..), ..)`.
# Written `(?:\(\s*)?` where it once read `\(?\s*`: the same matches (the blanks that `\s*` took
# without a parenthesis are ones the `\s+` before it takes), but no two adjacent runs of blanks,
# which made a search quadratic in a run of blanks after `assert`. Every run here is followed by
# something it cannot match, so backtracking costs one step per character.
_CALLED = re.compile(r"assert\s+(?:not\s+)?(?:\(\s*)?(?:math\.isclose\(\s*)?(?:set\(\s*)?"
                     r"([A-Za-z_]\w*)\s*\(")


def task_message(item: dict) -> str:
    """The last user message: the task statement and its asserts."""
    users = [m["content"] for m in item["prompt"] if m.get("role") == "user"]
    return users[-1]


def entry_point(item: dict) -> str | None:
    """Name of the function the prompt asks for, read from the prompt's asserts."""
    match = _CALLED.search(task_message(item))
    return match.group(1) if match else None


def tests_of(item: dict) -> list[str]:
    """The row's asserts; ValueError if ground_truth is not a JSON list of strings."""
    tests = json.loads(item["reward_model"]["ground_truth"])
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("ground_truth is not a non-empty JSON list of assert strings")
    return tests


class MBPPTask(Task):
    """MBPP (test split: tasks 11-510); presets bgpo, d1 and lenient use the same all-tests-pass rule."""

    name = "mbpp"
    presets = ("bgpo", "d1", "lenient")

    def score(self, completion: str, item: dict, *, preset: str,
              options: ScoringOptions) -> RewardResult:
        started = time.monotonic()
        try:
            tests = tests_of(item)
            entry = entry_point(item)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            return failure("error", f"malformed mbpp row: {type(e).__name__}: {e}", started)
        if preset not in self.presets:
            return failure("error", f"unknown preset {preset!r} for mbpp", started)
        call, options = isolated("rewards.tasks.code_common:extract_code",
                                 str(completion)[: options.max_completion_chars], entry, options=options)
        if call.status != "ok":
            return failure(call.status, f"reading the code: {call.detail}", started, entry_point=entry)
        code = call.value
        if not code.strip():
            return failure("no_answer", "no code in the completion", started, entry_point=entry)
        return score_in_sandbox(code, tests, options, entry=entry, started=started,
                                extra={"entry_point": entry})
