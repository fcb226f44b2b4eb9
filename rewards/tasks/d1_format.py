"""d1's format reward terms (diffu-grpo `reward_func.py`), reimplemented without regexes that
could backtrack quadratically on a long completion.

Each term mirrors d1's definition; where d1 is buggy we say how ours differs:
- `strict_format` / `soft_format`: d1 matches `.*?` across newlines (re.DOTALL); same here.
- `xml_count`: d1's trailing-text penalty is unbounded (a long tail drives the reward far below 0);
  ours is clamped to [0, 0.5] so a d1-preset reward stays in [0, 4].
- `boxed_in_answer`: d1 tests `"\\boxed" in r` written as "\boxed" (a backspace character), so it
  never fires as meant; ours looks for a real backslash.
"""

from __future__ import annotations

import re

_REASONING_THEN_ANSWER = re.compile(r"</reasoning>\s*<answer>")


def strict_format(text: str) -> float:
    """0.5 if the whole text is `<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>\\n`."""
    head, middle, tail = "<reasoning>\n", "\n</reasoning>\n<answer>\n", "\n</answer>\n"
    if not (text.startswith(head) and text.endswith(tail)):
        return 0.0
    # The earliest middle marker leaves the most room for the answer body.
    pos = text.find(middle, len(head))
    ok = pos != -1 and pos + len(middle) <= len(text) - len(tail)
    return 0.5 if ok else 0.0


def soft_format(text: str) -> float:
    """0.5 if the text starts with `<reasoning>...</reasoning>` followed by `<answer>...</answer>`."""
    if not text.startswith("<reasoning>"):
        return 0.0
    match = _REASONING_THEN_ANSWER.search(text, len("<reasoning>"))
    return 0.5 if match and text.find("</answer>", match.end()) != -1 else 0.0


def xml_count(text: str) -> float:
    """0.125 per well-placed tag, minus 0.001 per character after the answer; clamped to [0, 0.5]."""
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return min(0.5, max(0.0, score))


def d1_answer(text: str) -> str | None:
    """d1's `extract_xml_answer`: text after the last `<answer>` up to `</answer>`, stripped.
    d1 returns the whole completion when there is no tag; we return None (no answer)."""
    if "<answer>" not in text:
        return None
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def boxed_in_answer(text: str) -> float:
    """0.5 if the last answer block contains `\\boxed` (d1's term, backspace bug fixed)."""
    block = d1_answer(text)
    return 0.5 if block is not None and "\\boxed" in block else 0.0


def format_terms(text: str) -> dict[str, float]:
    """The three format terms every d1 reward adds up."""
    return {"strict_format": strict_format(text), "soft_format": soft_format(text),
            "xml_count": xml_count(text)}
