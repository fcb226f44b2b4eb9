"""Countdown scoring and the bounded arithmetic evaluator."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import pytest

from rewards import score
from rewards.arith import ArithError, evaluate_text
from rewards.generators import reachable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"
ROWS = [json.loads(x) for x in (FIXTURES / "countdown.jsonl").read_text().splitlines()]


def item(numbers: list[int], target: int) -> dict:
    return {"reward_model": {"ground_truth": str(target), "style": "rule"},
            "extra_info": {"numbers": json.dumps(numbers)}}


def solve(row: dict) -> str:
    numbers = json.loads(row["extra_info"]["numbers"])
    return reachable(numbers)[Fraction(int(row["reward_model"]["ground_truth"]))]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["extra_info"]["numbers"])
def test_real_rows_solved_score_one_in_every_preset(row):
    expr = solve(row)
    for preset in ("bgpo", "d1", "lenient"):
        result = score("countdown", f"<reasoning>\nr\n</reasoning>\n<answer>\n{expr}\n</answer>", row,
                       preset=preset)
        assert (result.score, result.status) == (1.0, "ok"), result
    assert score("countdown", f" {expr}\n", row, preset="compact").score == 1.0


@pytest.mark.parametrize("preset", ["bgpo", "lenient"])
def test_scoring_rules(preset):
    row = item([30, 100, 93], 23)

    def reward(text):
        return score("countdown", text, row, preset=preset)

    assert reward("<answer>93-100+30</answer>").score == 1.0
    wrong = reward("<answer>100-93+30</answer>")
    assert (wrong.score, wrong.status) == (0.1, "wrong")
    assert reward("<answer>93-100+30+0</answer>").score == 0.1  # extra number
    assert reward("<answer>93-100+100</answer>").score == 0.1  # wrong multiset
    assert reward("<answer>93-100+30 = 23</answer>").score == 0.1
    none = reward("93-100+30")
    assert (none.score, none.status) == (0.0, "no_answer")
    assert reward("<answer>x</answer> <answer>93-100+30</answer>").score == 1.0
    assert score("countdown", "", row, preset="compact").status == "no_answer"


@pytest.mark.parametrize("preset", ["bgpo", "lenient"])
def test_fractions(preset):
    assert score("countdown", "<answer>1/3*3</answer>", item([1, 3, 3], 1), preset=preset).score == 1.0
    assert score("countdown", "<answer>(7/3-2)*3</answer>", item([7, 3, 2, 3], 1), preset=preset).score == 1.0


@pytest.mark.parametrize("text, numbers, target", [
    ("2.5*2", [2, 5, 2], 5),  # the references read "2.5" as the numbers 2 and 5
    ("2**3*1", [2, 3, 1], 8),
    ("7//2*1", [7, 2, 1], 3),
])
def test_reference_presets_follow_python_eval(text, numbers, target):
    """Scores checked against d1's compute_score; lenient refuses floats, ** and //."""
    row = item(numbers, target)
    for preset in ("bgpo", "d1"):
        assert score("countdown", f"<answer>{text}</answer>", row, preset=preset).score == 1.0
    assert score("countdown", f"<answer>{text}</answer>", row, preset="lenient").score == 0.1


@pytest.mark.parametrize("preset", ["bgpo", "lenient"])
@pytest.mark.parametrize("expr", [
    "99**98**97", "97**(99**98)", "-(99**98**97)", "(99**98)**97", "9**9**9**9", "2**10000000", "(99//98)*97", "99%98+97",
    "__import__('os').system('true')", "1e308*99", "1.5+98+97", "(" * 600 + "1" + ")" * 600,
    "+".join(["99"] * 400), "99/(98-98)", "9" * 900,
])
def test_hostile_expressions_answered_in_milliseconds(expr, preset):
    """d1 evaluates with eval(): `99**98**97` hangs it. Ours refuses or bounds everything."""
    start = time.monotonic()
    result = score("countdown", f"<answer>{expr}</answer>", item([99, 98, 97], 24), preset=preset)
    assert time.monotonic() - start < 0.5  # typically < 1 ms; slack for a loaded CI machine
    assert (result.score, result.status) == (0.1, "wrong")


def test_evaluator_bounds():
    assert evaluate_text("(1+2)*3/4 - -1") == Fraction(13, 4)
    for bad in ("2**3", "a+1", "1.0", "", "1_000", "()", "f(1)"):
        with pytest.raises(ArithError):
            evaluate_text(bad)
    with pytest.raises(ArithError, match="bits"):
        evaluate_text("*".join(["999999999999999999999999999999"] * 12))


def test_malformed_item_is_an_error_not_an_exception():
    assert score("countdown", "<answer>1</answer>", {"reward_model": {}}).status == "error"
    assert score("countdown", "<answer>1</answer>",
                 {"extra_info": {"numbers": "not json"}, "reward_model": {"ground_truth": "1"}}
                 ).status == "error"
