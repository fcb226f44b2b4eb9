"""BGPO's math reward (GSM8K, MATH): a port of the grader in DARE's `math_rm`.

Reference: yjyddq/DARE at 83ae8a305a53a914cce563aedceeac88566891cb,
`verl/utils/reward_score/math_reward.py` (`math_rm` -> `extract_answer`,
`_get_deepscaler_rule_base_reward`, `grade_answer_mathd`, `grade_answer_sympy`; unchanged since
the initial commit f4999da5), called through `dllm_rm` for every row whose `extra_info.task` is
"math" and whose `data_source` is neither sudoku nor countdown. DARE pins sympy 1.14.0 and
pylatexenc 2.10; the golden tests were produced with those versions.

The rule, as the reference has it:
- Answer: the last `\\boxed` (by `rfind`), brace-matched from there; it must read exactly
  `\\boxed{...}`. Unclosed, `\\boxed 5` or no `\\boxed` at all -> reward 0 (no fallback to an
  earlier box). A gold answer that itself contains `\\boxed` is extracted the same way.
- Correct (1) if the Hendrycks-normalised strings are equal (`grade_answer_mathd`), or if
  `grade_answer_sympy` says so: a second normalisation (units, words, `\\text{}`, LaTeX to text
  through pylatexenc), then element-wise over tuples/intervals: two plain fractions must be
  written identically (unreduced `2/4` is wrong for `1/2`), an integer gold needs an integer
  answer, anything else must simplify to a zero difference under sympy. Otherwise 0.

This module holds the answer extraction and the string match, which run in the scoring process;
the sympy step is `rewards.sympycheck`. Where ours differs, and why: the sympy step (pylatexenc,
`parse_expr`, `simplify`) runs in an `IsolationPool` child under the scoring deadline (the
reference runs it in-process without one, so `9**9**9**9` stalls it); past the deadline the reward
is 0 with status `timeout`. Answers longer than `MAX_SYMPY_CHARS` skip the sympy step (wrong) for
the same reason. Nothing here runs math-verify (that is the `lenient` preset).
"""

from __future__ import annotations

from rewards.tasks.answers import group_end
from rewards.tasks.hendrycks import strip_string

# Longer answers are not handed to sympy: no GSM8K/MATH gold answer comes close, and the
# reference's comma stripping alone is quadratic in the length.
MAX_SYMPY_CHARS = 1000

_BOXED_LEFT = "\\boxed{"


def last_boxed_only(text: str) -> str | None:
    """The last `\\boxed...{...}` group (or `\\fbox` when there is no `\\boxed`), braces
    included; None when none closes. Braces are counted from the `\\boxed` on, and only a
    closing brace that brings the count to zero ends it (as in the reference)."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    end = group_end(text, start)
    return text[start:end + 1] if end >= 0 else None


def strip_boxed(group: str | None) -> str | None:
    """The content of `\\boxed{...}`; None unless the group reads exactly that."""
    if group is None or not group.startswith(_BOXED_LEFT) or not group.endswith("}"):
        return None
    return group[len(_BOXED_LEFT):-1]


def extract_answer(text: str) -> str | None:
    """BGPO's answer: None unless the text contains `\\boxed` (a lone `\\fbox` does not count)."""
    if "\\boxed" not in text:
        return None
    return strip_boxed(last_boxed_only(text))


def gold_answers(label) -> list[str]:
    """The gold answers the reference compares with (empty: reward 0 whatever the answer)."""
    if label == "" or not isinstance(label, (str, float, int)):
        return []
    truth = str(label)
    if "\\boxed" in truth:
        inner = extract_answer(truth)
        return [inner] if inner is not None else []
    return [truth]


def unwrap_text(s: str) -> str | None:
    """The body of a whole-string `\\text{...}` (regex `^\\\\text\\{(.+?)\\}$`), else None.
    `$` also matches before a final newline; the body may not contain a newline."""
    if not s.startswith("\\text{"):
        return None
    if s.endswith("}"):
        body = s[6:-1]
    elif s.endswith("}\n"):
        body = s[6:-2]
    else:
        return None
    return body if body and "\n" not in body else None


def mathd_normalise(answer: str) -> str:
    """`mathd_normalize_answer`: strip, unwrap `\\text{}`, Hendrycks-normalise; on an error in
    the normalisation the (unwrapped) answer as it was."""
    answer = answer.strip()
    body = unwrap_text(answer)
    if body is not None:
        answer = body.strip()
    try:
        return strip_string(answer, swallow_slash_errors=True)
    except (IndexError, AssertionError, ValueError):
        return answer


def mathd_equal(given: str, gold: str) -> bool:
    return mathd_normalise(gold) == mathd_normalise(given)
