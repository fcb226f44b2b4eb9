"""Answer extraction and string normalisation shared by the tasks.

Everything here is linear in the completion length (completions may be megabytes) and never
evaluates anything: the scans use `str.find`, and no regex here has two adjacent runs that can
match the same character (those backtrack quadratically on a long run before failing), except
`as_number`'s, which only ever sees strings under a hundred characters.
`tests/rewards/test_linear_parsing.py` times every extractor on 1 MB inputs. Math equivalence
beyond normalised strings lives in `rewards.mathcheck`, run in a child process.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED_OR_BRACE = re.compile(r"\\(?:boxed|fbox)\s*\{|\{|\}")


def last_boxed(text: str) -> str | None:
    """Content of the last brace-matched `\\boxed{...}` (or `\\fbox{...}`); None if none closes.

    One forward pass with a stack, so an unclosed `\\boxed{` (a truncated answer) falls back to
    the previous closed one without rescanning. For nested boxes the one that opens last wins,
    as with the usual `rfind("\\boxed")` extraction.
    """
    stack: list[int] = []  # content start for \boxed{ openers, -1 for plain braces
    best_start, best = -1, None
    for match in _BOXED_OR_BRACE.finditer(text):
        token = match.group()
        if token == "}":
            if not stack:
                continue  # a stray closing brace outside any group
            start = stack.pop()
            if start >= 0 and start > best_start:
                best_start, best = start, text[start:match.start()]
        elif token == "{":
            stack.append(-1)
        else:
            stack.append(match.end())
    return best


_BRACE = re.compile(r"[{}]")


def group_end(text: str, start: int) -> int:
    """Index of the `}` that brings the brace count, counted from `start`, back to zero; -1 if
    none does. The loop both reference graders run over every character from a `\\boxed` on
    (a `}` before any `{` takes the count below zero, and only a `}` can end the group), here
    stepping from brace to brace."""
    depth = 0
    for match in _BRACE.finditer(text, start):
        if match.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return match.start()
    return -1


def last_tag(text: str, tag: str = "answer") -> str | None:
    """Content of the last complete `<tag>...</tag>` pair, stripped; None if there is none.

    The last closing tag and the last opening tag before it: two reverse scans, linear even for
    a megabyte of closing tags. An opening tag after the last closing one (a truncated answer)
    is ignored.
    """
    end = text.rfind(f"</{tag}>")
    if end == -1:
        return None
    start = text.rfind(f"<{tag}>", 0, end)
    if start == -1:
        return None
    return text[start + len(tag) + 2:end].strip()


_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_DROP = re.compile(r"\\\$|\\left|\\right|\\[,!;: ]|\\displaystyle|\$|\s+")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def normalise(answer: str) -> str:
    """A canonical string for an answer: no spacing macros, `\\left`, `$`, `\\text{}`, units of
    degrees, trailing periods, `dfrac`; thousands separators removed from plain numbers."""
    s = _TEXT_WRAPPERS.sub(r"\1", answer)
    s = _DROP.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "")
    s = s.rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?", s):
        s = s.replace(",", "")
    return s


MAX_NUMBER_CHARS = 40  # a longer numerator or denominator is not read as a number
_FRAC = re.compile(r"(-?)\\frac\{?(\d+)\}?\{?(\d+)\}?")
# No longer string can give a number: `-\frac{a}{b}` with both parts MAX_NUMBER_CHARS long.
_MAX_AS_NUMBER_CHARS = 2 * MAX_NUMBER_CHARS + len("-\\frac{}{}")


def as_number(normalised: str) -> Fraction | None:
    """The exact value of a plain decimal or `a/b` / `\\frac{a}{b}` string, else None."""
    s = normalised
    if len(s) > _MAX_AS_NUMBER_CHARS:
        # Checked first: `_FRAC`'s two digit runs split a long run of digits every way before
        # failing, quadratic in its length (`\\frac`, 30,000 digits and an `x`: 7 s). Nothing is
        # lost: the parts would be over MAX_NUMBER_CHARS.
        return None
    frac = _FRAC.fullmatch(s)
    if frac:
        s = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    parts = s.split("/")
    if len(parts) > 2 or not all(len(p) <= MAX_NUMBER_CHARS and _NUMBER.fullmatch(p) for p in parts):
        return None
    try:
        value = Fraction(parts[0])
        if len(parts) == 2:
            value /= Fraction(parts[1])
    except (ValueError, ZeroDivisionError):
        return None
    return value


def last_answer_match(text: str, tag: str = "answer") -> str | None:
    """The last match of `re.findall(r"<tag>(.*?)</tag>", text, re.DOTALL)`, unstripped; None if
    there is none. This is how BGPO and d1 read Countdown and Sudoku answers; unlike `last_tag`,
    a match opens at the FIRST `<tag>` after the previous match, so `<answer>a<answer>b</answer>`
    gives "a<answer>b". One forward scan."""
    opener, closer = f"<{tag}>", f"</{tag}>"
    found, pos = None, 0
    while True:
        start = text.find(opener, pos)
        if start == -1:
            return found
        end = text.find(closer, start + len(opener))
        if end == -1:
            return found  # no later opener can close either
        found, pos = text[start + len(opener):end], end + len(closer)
