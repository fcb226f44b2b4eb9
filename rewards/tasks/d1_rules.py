"""d1's reward terms for GSM8K and MATH, ported exactly, bugs included.

Reference: dllm-reasoning/d1 at 837888f (the head of its main history; `diffu-grpo/reward_func.py`
and `diffu-grpo/math500_utils.py` last changed in 03f4e69). `diffu_grpo_train.py` there sums,
with weight 1 each (TRL's default `reward_weights`):
- GSM8K: `xmlcount_reward_func + soft_format_reward_func + strict_format_reward_func +
  int_reward_func + correctness_reward_func` (max 4.0);
- MATH: `correctness_reward_func_math + boxed_and_answer_tags_format_reward` (max 2.5 as written;
  3.0 only for a literal backspace, see below).
Another stored copy of `reward_func.py` passes re.DOTALL to the two format regexes; this port
follows 837888f, which does not, so reasoning or an answer spanning several lines earns no
strict/soft format credit.

Kept as d1 has them (the golden tests hold us to it):
- `extract_xml_answer` returns the whole stripped completion when there is no `<answer>`, so a
  bare "42" gets GSM8K's correctness and integer terms.
- `count_xml` subtracts 0.001 per character after the answer without bound: it can go negative.
- `boxed_in_answer` tests for `"\\boxed"` written as "\boxed", i.e. a backspace character plus
  "oxed"; a real `\\boxed` only earns the 0.5 "else" branch. It reads the FIRST answer block.
- MATH correctness: an unclosed last `\\boxed{` or no box at all compares the whole completion
  with the gold answer; `\\boxed 5` (with a space) reads up to the next `$`.

Everything is linear in the completion: the two format regexes are replaced by equivalent
scans (the soft one, `re.match` with `.*?` twice, is quadratic on a long first line), and d1's
`split(...)[-1]` / `[0]` by `rpartition` / `partition`, which give the same pieces.
"""

from __future__ import annotations

import re

from rewards.tasks.answers import group_end
from rewards.tasks.hendrycks import strip_string

# ---- GSM8K terms ----

_BLANKS = re.compile(r"\s*")  # what `\s*` matches, i.e. str.isspace() characters


def xml_answer(text: str) -> str:
    """`extract_xml_answer`: after the last `<answer>`, up to the next `</answer>`, stripped;
    the whole text stripped when there is no `<answer>`."""
    # rpartition/partition give split(...)[-1] / split(...)[0] without building the pieces.
    return text.rpartition("<answer>")[2].partition("</answer>")[0].strip()


def correctness(text: str, gold: str) -> float:
    return 2.0 if xml_answer(text) == gold else 0.0


def integer(text: str) -> float:
    return 0.5 if xml_answer(text).isdigit() else 0.0


def strict_format(text: str) -> float:
    """0.5 for `re.match(r"^<reasoning>\\n.*?\\n</reasoning>\\n<answer>\\n.*?\\n</answer>\\n$")`
    without DOTALL: one line of reasoning, one line of answer; `$` also allows one final newline."""
    if text.count("\n") not in (6, 7):  # before splitting: a megabyte of newlines is no list
        return 0.0
    lines = text.split("\n")
    if any(lines[6:]):
        return 0.0
    ok = (lines[0], lines[2], lines[3], lines[5]) == ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
    return 0.5 if ok else 0.0


def soft_format(text: str) -> float:
    """0.5 for `re.match(r"<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>")` without DOTALL:
    the text starts with `<reasoning>`, some `</reasoning>` on that first line is followed (after
    whitespace, newlines allowed) by `<answer>`, and a `</answer>` follows on that same line."""
    head = "<reasoning>"
    if not text.startswith(head):
        return 0.0
    first_line_end = _line_end(text, 0)
    dead_lines: set[int] = set()  # ends of lines already known to hold no "</answer>" after k
    pos = text.find("</reasoning>", len(head))
    while pos != -1 and pos + len("</reasoning>") <= first_line_end:
        j = _BLANKS.match(text, pos + len("</reasoning>")).end()  # greedy; <answer> has no blank
        if text.startswith("<answer>", j):
            k = j + len("<answer>")
            # Not a search per try: every <answer> reached before the first newline shares that
            # line's end, and at most one run of blanks (the one containing it) gets past it.
            end = first_line_end if k <= first_line_end else _line_end(text, k)
            if end not in dead_lines:  # a later try on the same line starts further right
                if text.find("</answer>", k, end) != -1:
                    return 0.5
                dead_lines.add(end)
        pos = text.find("</reasoning>", pos + 1)
    return 0.0


def _line_end(text: str, start: int) -> int:
    end = text.find("\n", start)
    return len(text) if end == -1 else end


def xml_count(text: str) -> float:
    """`count_xml`: 0.125 per tag found exactly once, less 0.001 per trailing character (unbounded)."""
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.rpartition("\n</answer>\n")[2]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.rpartition("\n</answer>")[2]) - 1) * 0.001
    return score


def gsm8k_terms(text: str, gold: str) -> dict[str, float]:
    """d1's five GSM8K terms, summed in the order TRL adds them up."""
    return {"xml_count": xml_count(text), "soft_format": soft_format(text),
            "strict_format": strict_format(text), "integer": integer(text),
            "correctness": correctness(text, gold)}


# ---- MATH terms (math500_utils) ----


def last_boxed_only(text: str) -> str | None:
    """d1's `last_boxed_only_string`: `\\boxed <x>` up to the next `$` if the text has
    `\\boxed ` anywhere; else the last brace-matched `\\boxed{...}`/`\\fbox{...}` (None when it
    does not close); the whole text when there is neither."""
    if "\\boxed " in text:
        return "\\boxed " + text.rpartition("\\boxed ")[2].partition("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    end = group_end(text, start)
    return text[start:end + 1] if end >= 0 else None


def remove_boxed(s: str) -> str:
    """d1's `remove_boxed`: the content of `\\boxed <x>` or `\\boxed{x}`, else `s` itself.
    TypeError for None (the caller keeps the raw completion then, as d1's try/except does)."""
    if "\\boxed " in s:
        if not s.startswith("\\boxed "):
            raise AssertionError("\\boxed with a space not at the start")
        return s[len("\\boxed "):]
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[len("\\boxed{"):-1]
    return s


def math_answer(text: str) -> str:
    """The string d1 compares with the gold answer."""
    try:
        return remove_boxed(last_boxed_only(text))
    except (TypeError, AssertionError):
        return text


def is_equiv(a: str, b: str) -> bool:
    """Hendrycks-normalised equality; raw equality when either normalisation raises (d1's copy
    raises on a non-integer `x/y`, a trailing `\\frac`/`\\sqrt`, two `\\text{ ` units)."""
    try:
        return strip_string(a, swallow_slash_errors=False) == strip_string(b, swallow_slash_errors=False)
    except (IndexError, AssertionError, ValueError):
        return a == b


def boxed_in_answer(text: str) -> float:
    """d1's `boxed_in_answer`: 1 if there is an `<answer>` (its FIRST block is then searched,
    else the whole text), plus 1 if that holds a backspace + "oxed", else 0.5."""
    block, reward = text, 0.0
    if "<answer>" in text:
        block = text.split("<answer>", 2)[1].partition("</answer>")[0]
        reward += 1.0
    reward += 1.0 if "\x08oxed" in block else 0.5  # d1 wrote "\boxed": a backspace, not "\\"
    return reward


def math_terms(text: str, gold: str) -> dict[str, float]:
    """d1's two MATH terms; `gold` goes through the same extraction as d1's dataset solutions."""
    gold_answer = remove_boxed(last_boxed_only(gold))
    return {"correctness": 2.0 if is_equiv(math_answer(text), gold_answer) else 0.0,
            "boxed_and_answer_tags": 0.5 * boxed_in_answer(text)}
