"""GSM8K and MATH scoring: real rows, presets, d1 regressions, hostile completions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rewards import ScoringOptions, score
from rewards.tasks import d1_rules
from rewards.tasks.answers import last_answer_match, last_boxed, last_tag, normalise

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


def math_row(gold: str) -> dict:
    return {"prompt": [{"role": "user", "content": "q"}],
            "reward_model": {"ground_truth": gold, "style": "rule"}}


@pytest.mark.parametrize("preset", ["bgpo", "lenient"])
@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_gold_answer_boxed_scores_one_on_real_rows(name, preset):
    for row in rows(name):
        gold = row["reward_model"]["ground_truth"]
        result = score(name, f"Reasoning... so the answer is \\boxed{{{gold}}}.", row, preset=preset)
        assert (result.score, result.status) == (1.0, "ok"), (gold, result)


# Equal forms; the bgpo column is what DARE's math_rm returns (checked with the official code).
@pytest.mark.parametrize("gold, answer, bgpo", [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", 1.0),
    ("p - q", "p-q", 1.0),
    ("\\frac{14}{3}", "14/3", 1.0),
    ("\\text{Evelyn}", "Evelyn", 1.0),
    ("90^\\circ", "90", 1.0),
    ("3\\sqrt{13}", "\\sqrt{117}", 1.0),  # lenient needs math-verify, bgpo sympy
    ("x=5", "5", 1.0),
    ("18", "18.00", 1.0),
    ("2220", "2,220", 1.0),
    ("\\frac{1}{2}", "0.5", 1.0),
    ("\\frac{1}{2}", "\\frac{2}{4}", 0.0),  # BGPO's grader rejects unreduced fractions
    ("\\frac{1}{2}", "2/4", 0.0),
])
def test_equivalent_forms(gold, answer, bgpo):
    assert score("math", f"\\boxed{{{answer}}}", math_row(gold), preset="lenient").status == "ok"
    assert score("math", f"\\boxed{{{answer}}}", math_row(gold), preset="bgpo").score == bgpo


def test_wrong_and_missing_answers():
    for preset in ("bgpo", "lenient"):
        assert score("math", "\\boxed{\\sqrt{118}}", math_row("3\\sqrt{13}"), preset=preset).status == "wrong"
        result = score("gsm8k", "The answer is 18.", math_row("18"), preset=preset)
        assert (result.score, result.status) == (0.0, "no_answer")


def test_last_boxed_rules():
    for preset in ("bgpo", "lenient"):
        assert score("math", "\\boxed{3} no wait \\boxed{4}", math_row("4"), preset=preset).status == "ok"
        assert score("math", "\\boxed{3} no wait \\boxed{4}", math_row("3"), preset=preset).status == "wrong"
    # A truncated last box: lenient falls back to the previous closed one, BGPO scores 0.
    truncated = "\\boxed{4} then \\boxed{5"
    assert score("math", truncated, math_row("4"), preset="lenient").score == 1.0
    assert score("math", truncated, math_row("4"), preset="bgpo").status == "no_answer"
    assert last_boxed("\\boxed{\\frac{1}{2}} then \\boxed{3") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("no box") is None
    # BGPO reads only `\\boxed{...}` exactly: a space or \\fbox gives no answer.
    for text in ("\\boxed {4}", "\\boxed 4$", "\\fbox{4}"):
        assert score("math", text, math_row("4"), preset="bgpo").status == "no_answer", text


def test_helpers():
    assert last_tag("<answer>1</answer> x <answer> 2 </answer>") == "2"
    assert last_tag("<answer>1") is None
    assert normalise("\\$1,000.") == "1000"
    assert last_answer_match("<answer>a<answer>b</answer> <answer>c") == "a<answer>b"
    assert last_answer_match("<answer>1</answer><answer>\n2\n</answer>") == "\n2\n"
    assert last_answer_match("<answer>1") is None


def test_d1_gsm8k_terms():
    """d1 837888f: format regexes without DOTALL, so only one-line reasoning gets format credit."""
    row = rows("gsm8k")[0]
    gold = row["reward_model"]["ground_truth"]
    one_line = f"<reasoning>\nwork\n</reasoning>\n<answer>\n{gold}\n</answer>\n"
    result = score("gsm8k", one_line, row, preset="d1")
    assert result.extra["terms"] == {"xml_count": 0.5, "soft_format": 0.0, "strict_format": 0.5,
                                     "integer": 0.5, "correctness": 2.0}
    assert result.score == pytest.approx(3.5) and result.status == "ok"
    multi_line = one_line.replace("work", "line one\nline two")
    assert score("gsm8k", multi_line, row, preset="d1").extra["terms"]["strict_format"] == 0.0
    wrong = score("gsm8k", one_line.replace(gold, gold + "1"), row, preset="d1")
    assert wrong.score == pytest.approx(1.5) and wrong.status == "wrong"
    bare = score("gsm8k", f" {gold} ", row, preset="d1")  # no tags: the whole text is the answer
    assert bare.score == pytest.approx(2.5)
    single = f"<reasoning>work</reasoning>  <answer>{gold}</answer>"
    assert score("gsm8k", single, row, preset="d1").extra["terms"]["soft_format"] == 0.5


def test_d1_math_terms_keep_d1s_backspace():
    """d1 wrote "\\boxed" as "\boxed" (a backspace): a real \\boxed earns only the 0.5 branch."""
    row = rows("math")[2]
    gold = row["reward_model"]["ground_truth"]
    text = f"<reasoning>\nwork\n</reasoning>\n<answer>\n\\boxed{{{gold}}}\n</answer>\n"
    result = score("math", text, row, preset="d1")
    assert result.extra["terms"] == {"correctness": 2.0, "boxed_and_answer_tags": 0.75}
    backspace = f"<answer>\x08oxed{{{gold}}}</answer>"
    assert score("math", backspace, row, preset="d1").extra["terms"]["boxed_and_answer_tags"] == 1.0
    # No closed box: d1 compares the whole completion with the gold answer.
    assert score("math", gold, row, preset="d1").score == pytest.approx(2.25)
    assert score("math", f"\\boxed{{{gold}}} then \\boxed{{5", row, preset="d1").score == pytest.approx(0.25)


def test_d1_xml_count_tail_penalty_is_unbounded_as_in_d1():
    text = "<reasoning>\na\n</reasoning>\n<answer>\n1\n</answer>\n" + "x" * 2000
    assert d1_rules.xml_count(text) == pytest.approx(-3.5)  # 0.5 - 2 x 2000 x 0.001, as d1 gives


def test_d1_format_scans_are_linear():
    """d1's soft regex is quadratic on a long first line; our scan is not."""
    hostile = "<reasoning>" + "</reasoning> <answer>" * 20_000
    for text in (hostile, "<reasoning>\n" + "a" * 1_000_000, "\n</answer>" * 200_000):
        start = time.monotonic()
        assert score("gsm8k", text, math_row("18"), preset="d1").score <= 0.5
        assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("preset, power", [("lenient", "9^{9^{9^{9}}}"), ("bgpo", "9**9**9**9")])
def test_nested_power_times_out_and_next_item_still_scores(preset, power):
    row = math_row("3\\sqrt{13}")
    assert score("math", "\\boxed{\\sqrt{117}}", row, preset=preset).status == "ok"  # warm the pool
    deadline = 1.5
    start = time.monotonic()
    result = score("math", f"\\boxed{{{power}}}", row, preset=preset,
                   options=ScoringOptions(deadline_s=deadline))
    elapsed = time.monotonic() - start
    assert result.status == "timeout" and result.score == 0.0
    assert elapsed < deadline + 2.0  # kill + reply; slack for a loaded machine
    assert score("math", "\\boxed{\\sqrt{117}}", row, preset=preset).status == "ok"


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
def test_prompts_per_preset(name):
    from rewards.tasks import get_task
    from rewards.tasks.prompts import BOXED_INSTRUCTION, D1_SYSTEM_PROMPT

    task, row = get_task(name), rows(name)[0]
    question = row["prompt"][-1]["content"]
    assert task.format_prompt(row, "bgpo") == row["prompt"]  # DARE adds nothing to the row
    lenient = task.format_prompt(row, "lenient")[-1]["content"]
    assert lenient == f"{question.rstrip()}\n{BOXED_INSTRUCTION}"
    d1 = task.format_prompt(row, "d1")
    assert len(d1) == 1 and d1[0]["content"].startswith(D1_SYSTEM_PROMPT + "\n\n")
    assert d1[0]["content"].endswith(question)
    assert ("Wrap the final answer in a \\boxed{}" in d1[0]["content"]) == (name == "math")
    assert row["prompt"][-1]["content"] == question  # the row itself is not modified
    carried = {**row, "prompt": [{"role": "user", "content": lenient}]}
    assert task.format_prompt(carried, "lenient")[-1]["content"] == lenient
