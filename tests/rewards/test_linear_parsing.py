"""Answer parsing is linear in the completion, and the length cap comes before it.

Every extractor and normaliser that reads completion text (or text derived from it) runs on
adversarial inputs of 1 MB and must return within a second of CPU time of the calling thread
(CPU time, so other load on a shared machine does not count). The quadratic code these replaced
took 7 s to over 30 s on a fifth of that (a boxed `\\frac` and 30,000 digits; ``` and 200,000
letters; `assert` and 200,000 blanks). A 10 s alarm stops a case that hangs, so a regression fails
in seconds rather than stalling the suite.

`EXTRACTORS` lists them all: add a row when a task gains a new one. One thing is not linear and
is not listed: CPython's own parser (ast.parse) on candidate code, quadratic in the fields of one
f-string; it runs in an isolation child, and the HumanEval/MBPP rows below check that the child's
deadline holds. Also here:
- `rewards.score` cuts a completion to `max_completion_chars` before any task sees it, and every
  task and preset answers a huge adversarial completion within its deadline, with its status;
- the scanners that replaced the reference regexes give what those regexes give (compared on
  many random short strings, where the regexes are fast).
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from pathlib import Path

import pytest
from host_checks import ShmemWatch

import rewards
from rewards import sympycheck
from rewards.isolation import CallResult, report_waits
from rewards.tasks import (
    answers,
    bgpo_math,
    code_common,
    countdown,
    countdown_reference,
    d1_rules,
    hendrycks,
    humaneval,
    mbpp,
    sudoku,
)
from rewards.types import ScoringOptions

MB = 1_000_000
CPU_BOUND_S = 1.0
ALARM_S = 10.0


def fill(unit: str, size: int = MB) -> str:
    """`unit` repeated to about `size` characters."""
    return unit * max(1, size // len(unit))


PUZZLE, SOLUTION = "1000000000000000", "1234341221434321"
CODE_ROWS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "rewards" / "code_rows.json")
                       .read_text())


def mbpp_entry(text: str):
    return mbpp.entry_point({"prompt": [{"role": "user", "content": text}]})


# (name, function of one string, adversarial input). One row per extractor or normaliser and
# input shape; the name says which function and what the input is.
EXTRACTORS = [
    ("answers.last_boxed:nested-unclosed", answers.last_boxed, fill("\\boxed{")),
    ("answers.last_boxed:braces", answers.last_boxed, fill("{")),
    ("answers.last_boxed:blanks-after-boxed", answers.last_boxed, "\\boxed" + fill(" ")),
    ("answers.group_end:braces", lambda t: answers.group_end(t, 0), fill("{")),
    ("answers.last_tag:openers", answers.last_tag, fill("<answer>")),
    ("answers.last_tag:closers", answers.last_tag, fill("</answer>")),
    ("answers.last_answer_match:openers", answers.last_answer_match, fill("<answer>")),
    ("answers.last_answer_match:pairs", answers.last_answer_match, fill("<answer>x</answer>")),
    ("answers.normalise:text-repeated", answers.normalise, fill("\\text{")),
    ("answers.normalise:text-unclosed", answers.normalise, "\\text{" + fill("a")),
    ("answers.normalise:text-blanks", answers.normalise, "\\text" + fill(" ") + "x"),
    ("answers.normalise:frac-digits", answers.normalise, "\\frac" + fill("1") + "x"),
    ("answers.normalise:thousands", answers.normalise, "1" + fill(",000") + "x"),
    ("answers.as_number:frac-digits", answers.as_number, "\\frac" + fill("1") + "x"),
    ("answers.as_number:frac-braced", answers.as_number, "-\\frac{" + fill("1") + "}{2}x"),
    ("answers.as_number:slash", answers.as_number, fill("1") + "/" + fill("2") + "x"),
    ("code_common.fenced_blocks:fence-letters", code_common.fenced_blocks, "```" + fill("a")),
    ("code_common.fenced_blocks:fences", code_common.fenced_blocks, fill("```")),
    ("code_common.fenced_blocks:fence-lines", code_common.fenced_blocks, fill("```\n")),
    ("code_common.fenced_blocks:tag-blanks", code_common.fenced_blocks, "```python" + fill(" ")),
    ("code_common.extract_code:fence-letters", lambda t: code_common.extract_code(t, "f"),
     "```" + fill("a")),
    ("code_common.extract_code:many-blocks", lambda t: code_common.extract_code(t, "f"),
     fill("```python\ndef g(): pass\n```\n")),
    ("code_common.extract_code:unclosed-parens", lambda t: code_common.extract_code(t, "f"),
     "```python\n" + fill("(")),
    ("humaneval.candidate_program:fence-letters", lambda t: humaneval.candidate_program(t, "", "f"),
     "```" + fill("a")),
    ("humaneval.candidate_program:many-blocks", lambda t: humaneval.candidate_program(t, "", "f"),
     fill("```\nx = (\n```\n")),
    ("mbpp.entry_point:assert-blanks", mbpp_entry, "assert" + fill(" ")),
    ("mbpp.entry_point:assert-not-blanks", mbpp_entry, "assert not" + fill(" ") + "x"),
    ("mbpp.entry_point:assert-paren-blanks", mbpp_entry, "assert (" + fill(" ") + "x"),
    ("mbpp.entry_point:assert-name", mbpp_entry, "assert " + fill("a")),
    ("mbpp.entry_point:asserts", mbpp_entry, fill("assert x ")),
    ("d1.xml_answer:openers", d1_rules.xml_answer, fill("<answer>")),
    ("d1.strict_format:newlines", d1_rules.strict_format, fill("\n")),
    ("d1.strict_format:long-lines", d1_rules.strict_format,
     "<reasoning>\n" + fill("a") + "\n</reasoning>\n<answer>\n" + fill("b") + "\n</answer>\n"),
    # 4 MB: the old scan's quadratic step was a memchr per try, under a second at 1 MB.
    ("d1.soft_format:long-first-line", d1_rules.soft_format,
     "<reasoning>" + fill("</reasoning> <answer>", 4 * MB)),
    ("d1.soft_format:blanks", d1_rules.soft_format, "<reasoning></reasoning>" + fill(" \n")),
    ("d1.soft_format:answers-on-lines", d1_rules.soft_format,
     "<reasoning>" + fill("</reasoning>\n<answer>")),
    ("d1.xml_count:tags", d1_rules.xml_count, fill("\n<answer>\n\n</answer>\n")),
    ("d1.last_boxed_only:nested", d1_rules.last_boxed_only, fill("\\boxed{")),
    ("d1.last_boxed_only:boxed-space", d1_rules.last_boxed_only, fill("\\boxed $")),
    ("d1.math_answer:nested", d1_rules.math_answer, fill("\\boxed{")),
    ("d1.is_equiv:frac-digits", lambda t: d1_rules.is_equiv(t, "1"), "\\frac" + fill("1")),
    ("d1.boxed_in_answer:openers", d1_rules.boxed_in_answer, fill("<answer>")),
    ("d1.gsm8k_terms:tags", lambda t: d1_rules.gsm8k_terms(t, "1"),
     "<reasoning>" + fill("\n</reasoning>\n<answer>\n")),
    ("d1.math_terms:frac-digits", lambda t: d1_rules.math_terms(t, "1"),
     "<answer>\\boxed{\\frac" + fill("1") + "x}"),
    ("bgpo.extract_answer:nested", bgpo_math.extract_answer, fill("\\boxed{")),
    ("bgpo.extract_answer:long-box", bgpo_math.extract_answer, "\\boxed{" + fill("{}") + "}"),
    ("bgpo.mathd_normalise:frac-digits", bgpo_math.mathd_normalise, "\\frac" + fill("1") + "x"),
    ("bgpo.mathd_normalise:text", bgpo_math.mathd_normalise, "\\text{" + fill("a") + "}"),
    ("bgpo.mathd_equal:slash-digits", lambda t: bgpo_math.mathd_equal(t, "1"),
     fill("1", MB // 2) + "/" + fill("2", MB // 2)),
    ("hendrycks.strip_string:fracs", lambda t: hendrycks.strip_string(t, swallow_slash_errors=True),
     fill("\\frac12")),
    ("hendrycks.strip_string:sqrts", lambda t: hendrycks.strip_string(t, swallow_slash_errors=True),
     fill("\\sqrt") + "1"),
    ("hendrycks.strip_string:equals", lambda t: hendrycks.strip_string(t, swallow_slash_errors=False),
     fill("=") + "x"),
    ("sudoku.reference_score:digits", lambda t: sudoku.reference_score(t, PUZZLE, SOLUTION),
     "<answer>" + fill("1") + "</answer>"),
    ("sudoku.score_grid:digits", lambda t: sudoku.score_grid(t, PUZZLE, SOLUTION), fill("1a")),
    ("countdown_reference.score:operators", lambda t: countdown_reference.score(t, [1, 2], 3),
     "<answer>1" + fill("+") + "2</answer>"),
    ("countdown_reference.score:blanks", lambda t: countdown_reference.score(t, [1, 2], 3),
     "<answer>1+" + fill(" ") + "2</answer>"),
    ("countdown_reference.score:tuples", lambda t: countdown_reference.score(t, [1, 2], 3),
     "<answer>1+2," + fill("(),") + "</answer>"),
    ("countdown_reference.uses_numbers:runs", lambda t: countdown_reference.uses_numbers(t, [1, 2]),
     fill("1+")),
    ("countdown_reference.evaluate:chain", countdown_reference.evaluate, fill("1+") + "1"),
    ("countdown.score_expression:chain", lambda t: countdown.score_expression(t, [1, 2], 3),
     fill("1+") + "1"),
    # sympycheck runs only in isolation children, on answers of at most MAX_SYMPY_CHARS; its
    # regexes are linear all the same (the LaTeX step, pylatexenc, is not timed here).
    ("sympycheck.sympy_normalise:thousands", sympycheck.sympy_normalise, "1" + fill(",000")),
    ("sympycheck.sympy_normalise:blanks", sympycheck.sympy_normalise, "1" + fill(" ") + "x"),
    ("sympycheck.sympy_normalise:units", sympycheck.sympy_normalise, "cm" + fill(" ") + "^x"),
    ("sympycheck.sympy_normalise:thin-spaces", sympycheck.sympy_normalise, fill(",\\! ")),
    ("sympycheck.split_tuple:commas", sympycheck._split_tuple, "(" + fill("1,") + ")"),
    ("sympycheck.allow_sympy:powers", sympycheck._allow_sympy, fill("^1")),
    ("sympycheck.fraction:digits", sympycheck._FRACTION.search, fill("1") + "/x"),
]


class _Hung(Exception):
    pass


def cpu_seconds(fn, *args) -> float:
    """CPU time `fn(*args)` takes in this thread; _Hung after ALARM_S of wall time."""
    def on_alarm(signum, frame):
        raise _Hung(f"still running after {ALARM_S}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, ALARM_S)
    try:
        start = time.thread_time()
        fn(*args)
        return time.thread_time() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(("fn", "text"), [(fn, text) for _, fn, text in EXTRACTORS],
                         ids=[name for name, _, _ in EXTRACTORS])
def test_extractor_is_linear_on_a_megabyte(fn, text):
    assert len(text) >= MB - 100
    seconds = cpu_seconds(_ignoring_errors, fn, text)
    assert seconds < CPU_BOUND_S, f"{seconds:.2f}s of CPU on {len(text):,} characters"


def _ignoring_errors(fn, text):
    try:
        fn(text)
    except (IndexError, AssertionError, ValueError, countdown_reference._EvalError):
        pass  # raised by design: Hendrycks' normalisation on malformed LaTeX, eval's errors


# ---- rewards.score: the cap first, then every task within its deadline ----

CAP = ScoringOptions().max_completion_chars
HEAD = 150_000  # adversarial payloads are put inside the cap, so the cut does not defuse them
MATH_ROW = {"reward_model": {"ground_truth": "\\frac{1}{2}", "style": "rule"}}
COUNTDOWN_ROW = {"extra_info": {"numbers": [1, 2], "target": 3}, "reward_model": {"ground_truth": "3"}}
SUDOKU_ROW = {"extra_info": {"puzzle": PUZZLE}, "reward_model": {"ground_truth": SOLUTION}}
HUMANEVAL_ROW = CODE_ROWS["humaneval"][0]["row"]
MBPP_ROW = CODE_ROWS["mbpp"][0]["row"]
BOXED_FRAC = "\\boxed{\\frac" + "1" * HEAD + "x}"

# One f-string with 66,000 replacement fields: CPython 3.11 takes 2.2 s to ast.parse it, and
# HumanEval parses a completion up to eight times. Those parses run in an isolation child, killed
# at the deadline (2 s here, to keep the test short).
F_STRING_BOMB = '```python\nx = f"' + "{x}" * 66_000 + '"\n```'

# (task, presets, row, completion of over a megabyte, expected status, deadline_s)
HUGE = [
    ("math", ("bgpo", "d1", "lenient"), MATH_ROW, BOXED_FRAC + fill("{"), "wrong", 10),
    ("math", ("bgpo", "lenient"), MATH_ROW, "\\boxed{" + fill("{"), "no_answer", 10),
    ("gsm8k", ("bgpo", "d1", "lenient"), MATH_ROW, BOXED_FRAC + fill("<answer>"), "wrong", 10),
    ("gsm8k", ("d1",), MATH_ROW, "<reasoning>" + fill("</reasoning> <answer>", 4 * MB), "wrong", 10),
    ("countdown", ("bgpo", "d1", "lenient"), COUNTDOWN_ROW,
     "<answer>1" + "+" * HEAD + "2</answer>" + fill("<answer>"), "wrong", 10),
    ("countdown", ("compact",), COUNTDOWN_ROW, "1" + fill("+") + "2", "wrong", 10),
    ("sudoku", ("bgpo", "d1", "lenient"), SUDOKU_ROW,
     "<answer>" + "1" * HEAD + "</answer>" + fill("<answer>"), "wrong", 10),
    ("sudoku", ("compact",), SUDOKU_ROW, fill("1"), "wrong", 10),
    ("humaneval", ("bgpo", "d1", "lenient"), HUMANEVAL_ROW, "```" + fill("a"), "wrong", 10),
    ("humaneval", ("bgpo",), HUMANEVAL_ROW, fill("```"), "wrong", 10),
    ("humaneval", ("bgpo",), HUMANEVAL_ROW, F_STRING_BOMB + fill(" "), "timeout", 2),
    ("mbpp", ("bgpo",), MBPP_ROW, "```" + fill("a"), "wrong", 10),
    ("mbpp", ("bgpo",), MBPP_ROW, F_STRING_BOMB + fill(" "), "timeout", 2),
]

# A right answer for each task's row above, scored before and after each huge completion: the
# verifier must give it the same (positive) score afterwards.
CORRECT = {
    "math": "so \\boxed{\\frac{1}{2}}",
    "gsm8k": "<reasoning>\nhalf\n</reasoning>\n<answer>\n\\boxed{\\frac{1}{2}}\n</answer>\n",
    "countdown": {"compact": "1+2", None: "<answer>1+2</answer>"},
    "sudoku": {"compact": SOLUTION, None: f"<answer>{SOLUTION}</answer>"},
    "humaneval": "```python\n" + humaneval.prompt_code(HUMANEVAL_ROW)
                 + CODE_ROWS["humaneval"][0]["solution_body"] + "```",
    "mbpp": "```python\n" + CODE_ROWS["mbpp"][0]["solution"] + "```",
}


def correct_answer(task: str, preset: str) -> str:
    answer = CORRECT[task]
    return answer.get(preset, answer[None]) if isinstance(answer, dict) else answer


class WaitClock:
    """Adds up the time the isolation pool reports waiting for a free or starting child."""

    def __init__(self) -> None:
        self.waited, self._since = 0.0, 0.0

    def wait_began(self) -> None:
        self._since = time.monotonic()

    def wait_ended(self) -> None:
        self.waited += time.monotonic() - self._since


@pytest.mark.parametrize(("task", "preset", "row", "completion", "status", "deadline_s"),
                         [(t, p, r, c, st, d) for t, presets, r, c, st, d in HUGE for p in presets],
                         ids=[f"{t}-{p}-{i}" for i, (t, presets, *_) in enumerate(HUGE) for p in presets])
def test_score_answers_a_huge_adversarial_completion_within_its_deadline(task, preset, row, completion,
                                                                          status, deadline_s):
    options = ScoringOptions(deadline_s=deadline_s)
    right = correct_answer(task, preset)
    before = rewards.score(task, right, row, preset=preset, options=options)
    if before.status == "sandbox_unavailable":
        pytest.skip("no code sandbox here")
    assert before.score > 0, (before.status, before.detail)
    results, waits = [], WaitClock()
    start = time.monotonic()
    with ShmemWatch() as host, report_waits(waits):
        cpu = cpu_seconds(lambda: results.append(rewards.score(task, completion, row, preset=preset,
                                                               options=options)))
    wall = time.monotonic() - start - waits.waited  # a child's start-up is not the item's time
    result = results[0]
    assert result.status == status and result.score < 1.0, (result.status, result.detail)
    assert result.extra["truncated_to"] == CAP
    assert wall < deadline_s + 1.0  # a timeout answers at the deadline, plus the child's kill
    assert cpu < CPU_BOUND_S, f"{cpu:.2f}s of CPU in the scoring process"
    host.assert_bounded()
    after = rewards.score(task, right, row, preset=preset, options=options)
    assert (after.score, after.status) == (before.score, before.status), after.detail


def test_the_cap_applies_before_any_task_parses(monkeypatch):
    """A 10 MB completion is cut to max_completion_chars before anything reads it: the surrogate
    repair and the task both get the head only."""
    repaired, seen = [], []

    class Spy:
        name, presets = "spy", ("bgpo",)

        def score(self, completion, item, *, preset, options):
            seen.append(completion)
            return rewards.RewardResult(0.0, "wrong")

    encodable = rewards._encodable
    monkeypatch.setattr(rewards, "_encodable", lambda text: repaired.append(len(text)) or encodable(text))
    monkeypatch.setattr(rewards, "get_task", lambda name: Spy())
    result = rewards.score("spy", "a" * CAP + "\ud800" * (10 * MB), {})
    assert repaired == [CAP] and seen == ["a" * CAP]
    assert result.extra["truncated_to"] == CAP
    small = rewards.score("spy", "b" * 10, {}, options=ScoringOptions(max_completion_chars=4))
    assert seen[-1] == "bbbb" and small.extra["truncated_to"] == 4


def test_code_parsing_runs_in_a_child_and_the_sandbox_gets_the_rest_of_the_deadline(monkeypatch):
    calls = []

    def fake_run_isolated(spec, *args, deadline_s):
        calls.append((spec, deadline_s))
        return CallResult("ok", value=("", None), seconds=3.0)

    monkeypatch.setattr(code_common, "run_isolated", fake_run_isolated)
    call, left = code_common.isolated("rewards.tasks.humaneval:candidate_program", "x", "", "f",
                                      options=ScoringOptions(deadline_s=10.0))
    assert calls == [("rewards.tasks.humaneval:candidate_program", 10.0)]
    assert call.value == ("", None) and left.deadline_s == 7.0
    result = rewards.score("humaneval", "def f(): pass", HUMANEVAL_ROW)  # the task goes through it
    assert calls[-1][0] == "rewards.tasks.humaneval:candidate_program"
    assert result.status == "no_answer"  # what the fake child said: no code


# ---- the scanners give what the regexes they replace give ----

# The reference patterns, kept here as the oracle: each is fast on short strings.
FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
CALLED_RE = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\(\s*)?(?:set\(\s*)?"
                       r"([A-Za-z_]\w*)\s*\(")
SOFT_RE = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")
STRICT_RE = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
FRAC_RE = re.compile(r"(-?)\\frac\{?(\d+)\}?\{?(\d+)\}?")


def random_texts(pieces: list[str], count: int = 3000, most: int = 12, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, most))) for _ in range(count)]


def old_brace_group(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def old_as_number(s: str):
    frac = FRAC_RE.fullmatch(s)
    if frac:
        s = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    parts = s.split("/")
    if len(parts) > 2 or not all(re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", p) and len(p) <= 40
                                 for p in parts):
        return None
    return parts


def test_fences_match_the_fence_regex():
    for text in random_texts(["```", "`", "\n", " ", "\t", "py", "python", "x", "+", "-", "\r", "def f"]):
        assert code_common.fences(text) == FENCE_RE.findall(text), repr(text)


def test_mbpp_assert_regex_finds_the_same_name():
    for text in random_texts(["assert", " ", "\n", "not", "(", "math.isclose(", "set(", "f", "_g1",
                              ")", "==", "\t"]):
        old, new = CALLED_RE.search(text), mbpp._CALLED.search(text)
        assert (old and (old.start(), old.group(1))) == (new and (new.start(), new.group(1))), repr(text)


def test_d1_scans_match_d1s_regexes_and_splits():
    pieces = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "x", "1",
              "\\boxed ", "\\boxed{", "\\fbox{", "{", "}", "$"]
    for text in random_texts(pieces, count=6000):
        assert d1_rules.soft_format(text) == (0.5 if SOFT_RE.match(text) else 0.0), repr(text)
        assert d1_rules.strict_format(text) == (0.5 if STRICT_RE.match(text) else 0.0), repr(text)
        assert d1_rules.xml_answer(text) == text.split("<answer>")[-1].split("</answer>")[0].strip()
        if "<answer>" in text:
            block = text.split("<answer>")[1].split("</answer>")[0]
            assert d1_rules.boxed_in_answer(text) == 1.0 + (1.0 if "\x08oxed" in block else 0.5)
        if "\\boxed " in text:
            old = "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
            assert d1_rules.last_boxed_only(text) == old, repr(text)
        expected = 0.0
        if text.count("\n<answer>\n") == 1:
            expected += 0.125 - len(text.split("\n</answer>\n")[-1]) * 0.001
        if text.count("\n</answer>") == 1:
            expected += 0.125 - (len(text.split("\n</answer>")[-1]) - 1) * 0.001
        expected += 0.125 * (text.count("<reasoning>\n") == 1) + 0.125 * (text.count("\n</reasoning>\n") == 1)
        assert d1_rules.xml_count(text) == pytest.approx(expected), repr(text)


def test_brace_scan_and_as_number_match_the_old_code():
    for text in random_texts(["{", "}", "\\boxed", "x", "{{", "}}"], most=16):
        for start in range(len(text) + 1):
            assert answers.group_end(text, start) == old_brace_group(text, start), (text, start)
    for text in random_texts(["-", "\\frac", "{", "}", "1", "23", "/", ".", "x", "+"], count=6000):
        old = old_as_number(text)
        new = answers.as_number(text)
        assert (new is None) == (old is None), repr(text)
    digits = "1" * (answers.MAX_NUMBER_CHARS)
    for text in (f"-\\frac{{{digits[1:]}}}{{{digits}}}", f"{digits}/{digits}", f"\\frac{digits}2"):
        assert answers.as_number(text) is not None and old_as_number(text) is not None, text
        assert answers.as_number(text + "1") is None and old_as_number(text + "1") is None, text
