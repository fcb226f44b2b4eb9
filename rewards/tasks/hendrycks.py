"""The Hendrycks MATH answer normalisation (`strip_string`), as both reference graders use it.

BGPO's grader (DARE `verl/utils/reward_score/math_reward.py`, `_strip_string`) and d1's
(`diffu-grpo/math500_utils.py`, `strip_string`) carry the same normalisation from the MATH
benchmark's code; they differ only in which errors the `a/b -> \\frac{a}{b}` step swallows:
DARE's catches every error there, d1's only a failed round-trip check, so for d1 a non-integer
`x/y` raises ValueError. Reimplemented here step by step, in the same order, raising where they
raise (a trailing `\\frac` or `\\sqrt`, two `\\text{ ` units): each caller decides what an error
means (`bgpo_math` keeps the unnormalised answer, `d1_rules` compares raw strings), as its
reference does.

Pure string work, linear in the input (replace and split only); nothing is evaluated. The one
non-linear step, `int()` of the two sides of `a/b`, is bounded by Python's own limit on integer
strings (4300 digits by default since 3.10.7 and 3.11; ValueError beyond, on the reference too),
so it cannot blow up in the scoring process.
"""

from __future__ import annotations


def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`; IndexError on a bare
    trailing `\\frac`; the input unchanged when a `\\frac` is followed by a single character."""
    pieces = s.split("\\frac")
    out = [pieces[0]]
    for piece in pieces[1:]:
        out.append("\\frac")
        if piece[0] == "{":  # IndexError on an empty piece, as in the reference
            out.append(piece)
            continue
        if len(piece) < 2:
            return s
        num, den, rest = piece[0], piece[1], piece[2:]
        out.append("{" + num + "}{" + den + "}" + rest if den != "{" else "{" + num + "}" + den + rest)
    return "".join(out)


def _fix_a_slash_b(s: str, swallow_errors: bool) -> str:
    """`3/4` -> `\\frac{3}{4}` when both sides are integers written canonically."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        num, den = int(parts[0]), int(parts[1])
    except ValueError:
        if swallow_errors:
            return s
        raise
    if s != f"{num}/{den}":
        return s
    return "\\frac{" + str(num) + "}{" + str(den) + "}"


def _remove_right_units(s: str) -> str:
    """Drop a trailing `\\text{ unit}`; AssertionError when it occurs more than once."""
    if "\\text{ " not in s:
        return s
    splits = s.split("\\text{ ")
    if len(splits) != 2:
        raise AssertionError("more than one \\text{ unit")
    return splits[0]


def _fix_sqrt(s: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}`; IndexError on a bare trailing `\\sqrt`."""
    if "\\sqrt" not in s:
        return s
    splits = s.split("\\sqrt")
    out = [splits[0]]
    for piece in splits[1:]:
        if piece[0] != "{":  # IndexError on an empty piece, as in the reference
            out.append("\\sqrt{" + piece[0] + "}" + piece[1:])
        else:
            out.append("\\sqrt" + piece)
    return "".join(out)


def strip_string(s: str, *, swallow_slash_errors: bool) -> str:
    """The MATH normalisation, step for step. `swallow_slash_errors`: True for DARE's copy,
    False for d1's (see the module docstring). May raise IndexError/AssertionError/ValueError."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 3" -> "3"
        s = sides[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s, swallow_slash_errors)
