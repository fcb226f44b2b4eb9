"""GSM8K and MATH scoring: real rows, presets, d1 regressions, hostile completions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rewards import ScoringOptions, score
from rewards.tasks.answers import last_boxed, last_tag, normalise
from rewards.tasks.d1_format import xml_count

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


def math_row(gold: str) -> dict:
    return {"prompt": [{"role": "user", "content": "q"}],
            "reward_model": {"ground_truth": gold, "style": "rule"}}


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_gold_answer_boxed_scores_one_on_real_rows(name):
    for row in rows(name):
        gold = row["reward_model"]["ground_truth"]
        result = score(name, f"Reasoning... so the answer is \\boxed{{{gold}}}.", row)
        assert (result.score, result.status) == (1.0, "ok"), (gold, result)


@pytest.mark.parametrize("gold, answer", [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("p - q", "p-q"),
    ("\\frac{14}{3}", "14/3"),
    ("\\text{Evelyn}", "Evelyn"),
    ("90^\\circ", "90"),
    ("3\\sqrt{13}", "\\sqrt{117}"),  # needs math-verify (symbolic)
    ("x=5", "5"),
    ("18", "18.00"),
    ("2220", "2,220"),
])
def test_equivalent_forms_are_correct(gold, answer):
    result = score("math", f"\\boxed{{{answer}}}", math_row(gold))
    assert result.status == "ok", result


def test_wrong_and_missing_answers():
    assert score("math", "\\boxed{\\sqrt{118}}", math_row("3\\sqrt{13}")).status == "wrong"
    result = score("gsm8k", "The answer is 18.", math_row("18"))
    assert (result.score, result.status) == (0.0, "no_answer")


def test_last_brace_matched_boxed_wins():
    assert score("math", "\\boxed{3} no wait \\boxed{4}", math_row("4")).status == "ok"
    assert score("math", "\\boxed{3} no wait \\boxed{4}", math_row("3")).status == "wrong"
    # A truncated last box does not count; the previous closed one does.
    assert last_boxed("\\boxed{\\frac{1}{2}} then \\boxed{3") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("no box") is None


def test_helpers():
    assert last_tag("<answer>1</answer> x <answer> 2 </answer>") == "2"
    assert last_tag("<answer>1") is None
    assert normalise("\\$1,000.") == "1000"


def test_d1_gsm8k_full_marks_is_four():
    row = rows("gsm8k")[0]
    gold = row["reward_model"]["ground_truth"]
    text = f"<reasoning>\nwork\n</reasoning>\n<answer>\n{gold}\n</answer>\n"
    result = score("gsm8k", text, row, preset="d1")
    assert result.score == pytest.approx(4.0) and result.status == "ok"
    wrong = score("gsm8k", text.replace(gold, gold + "1"), row, preset="d1")
    assert wrong.score == pytest.approx(2.0) and wrong.status == "wrong"


def test_d1_math_boxed_in_answer_is_a_real_backslash():
    """d1 wrote "\\boxed" as "\boxed" (a backspace), so the term never fired; ours does."""
    row = rows("math")[2]
    gold = row["reward_model"]["ground_truth"]
    text = f"<reasoning>\nwork\n</reasoning>\n<answer>\n\\boxed{{{gold}}}\n</answer>\n"
    result = score("math", text, row, preset="d1")
    assert result.extra["terms"]["boxed_in_answer"] == 0.5
    assert result.score == pytest.approx(4.0)
    backspace = text.replace("\\boxed", "\boxed")  # what d1's literal actually matched
    assert score("math", backspace, row, preset="d1").extra["terms"]["boxed_in_answer"] == 0.0


def test_d1_xml_count_tail_penalty_is_bounded():
    text = "<reasoning>\na\n</reasoning>\n<answer>\n1\n</answer>\n" + "x" * 100_000
    assert 0.0 <= xml_count(text) <= 0.5


def test_nested_power_times_out_and_next_item_still_scores():
    row = math_row("3\\sqrt{13}")
    assert score("math", "\\boxed{\\sqrt{117}}", row).status == "ok"  # warm the pool
    deadline = 1.5
    start = time.monotonic()
    result = score("math", "\\boxed{9^{9^{9^{9}}}}", row, options=ScoringOptions(deadline_s=deadline))
    elapsed = time.monotonic() - start
    assert result.status == "timeout" and result.score == 0.0
    assert elapsed < deadline + 2.0  # kill + reply; slack for a loaded machine
    assert score("math", "\\boxed{\\sqrt{117}}", row).status == "ok"


def test_megabyte_completions_are_fast_and_safe():
    row = math_row("18")
    for text in ("\\boxed{" * 1_000_000, "x" * 5_000_000 + "\\boxed{18}", "{" * 3_000_000):
        start = time.monotonic()
        result = score("gsm8k", text, row)
        assert time.monotonic() - start < 3.0
        assert result.status in ("no_answer", "wrong")
    head = score("gsm8k", "\\boxed{18}" + "x" * 5_000_000, row)
    assert head.status == "ok" and head.extra["truncated_to"] == ScoringOptions().max_completion_chars


def test_nul_bytes_and_non_strings_never_raise():
    row = math_row("18")
    assert score("gsm8k", "\x00\\boxed{18}\x00", row).status == "ok"
    assert score("math", "\\boxed{1\x008}", row).status in ("wrong", "error")
    for bad in (None, b"\\boxed{18}", 18, ["x"]):
        assert score("gsm8k", bad, row).status == "error"
    assert score("gsm8k", "\\boxed{18}", {}).status == "error"
    assert score("gsm8k", "\\boxed{18}", "not a dict").status == "error"


def test_unknown_task_or_preset_raises_naming_it():
    with pytest.raises(ValueError, match="nosuchtask"):
        score("nosuchtask", "x", {})
    with pytest.raises(ValueError, match="nosuchpreset"):
        score("gsm8k", "x", {}, preset="nosuchpreset")
    with pytest.raises(ValueError, match="compact"):
        score("math", "x", {}, preset="compact")


def test_lone_surrogates_are_replaced_so_results_serialise():
    result = score("math", "\\boxed{\ud800}", math_row("3"))
    assert result.status == "wrong"
    json.dumps(result.to_dict()).encode("utf-8")
    result.extra["answer"].encode("utf-8")


@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_prompts_ask_for_the_format_their_preset_scores(name):
    from rewards.tasks import get_task
    from rewards.tasks.math_tasks import BOXED_INSTRUCTION, D1_FORMAT_INSTRUCTION

    task, row = get_task(name), rows(name)[0]
    question = row["prompt"][-1]["content"]
    bgpo = task.format_prompt(row, "bgpo")[-1]["content"]
    d1 = task.format_prompt(row, "d1")[-1]["content"]
    assert bgpo == f"{question.rstrip()}\n{BOXED_INSTRUCTION}"
    assert d1.startswith(question.rstrip()) and D1_FORMAT_INSTRUCTION in d1
    assert BOXED_INSTRUCTION not in d1
    assert ("boxed" in d1) == (name == "math")  # d1's MATH answer is boxed inside <answer>
    assert row["prompt"][-1]["content"] == question  # the row itself is not modified
    # A row that already carries the preset's instruction is left alone.
    carried = {**row, "prompt": [{"role": "user", "content": d1}]}
    assert task.format_prompt(carried, "d1")[-1]["content"] == d1
