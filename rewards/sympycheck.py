"""BGPO's sympy grader (DARE `grade_answer_sympy`), meant to run inside an `IsolationPool` child.

Reference: yjyddq/DARE at 83ae8a305a53a914cce563aedceeac88566891cb,
`verl/utils/reward_score/math_reward.py` (`grade_answer_sympy`, `_normalize`, `split_tuple`,
`are_equal_under_sympy`, `should_allow_eval`), with sympy 1.14.0 and pylatexenc 2.10 as DARE pins
them. The rest of BGPO's math rule (extraction, the Hendrycks string match) is in
`rewards.tasks.bgpo_math`.

pylatexenc's LaTeX-to-text, sympy's `parse_expr` (which evaluates) and `simplify` can run for
minutes on a crafted answer: call `sympy_equal` only through
`rewards.isolation.run_isolated("rewards.sympycheck:sympy_equal", ...)`, whose deadline and
SIGKILL bound it. This module imports sympy and pylatexenc; the scoring process never imports it.
"""

from __future__ import annotations

import re

from rewards.tasks.bgpo_math import unwrap_text

try:  # the `math` extra plus pylatexenc; sympy_equal() says what is missing
    import sympy
    from pylatexenc import latex2text
    from sympy.parsing import sympy_parser
except ImportError:  # pragma: no cover - exercised only without them
    sympy = latex2text = sympy_parser = None


_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week",
          "month", "year", "foot", "feet", "inch", "yard")
_UNIT_RES = tuple(re.compile(unit + r"(es)?(s)? *(\^[0-9]+)?") for unit in _UNITS)
_CIRC = re.compile(r"\^ *\\circ")
_THIN_SPACE = re.compile(r",\\! *")
_DASH_SPACES = re.compile(r"- *")
_MIXED_NUMBER = re.compile(r"([0-9]) +([0-9])")
_THOUSANDS = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_FRACTION = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")
_BAD_SUBSTRINGS = ("^{", "^(")
_BAD_RES = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))
_TUPLE_CHARS = "()[]"
_LATEX_SYMBOLS = (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*"))


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _is_int(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (OverflowError, ValueError):  # inf, nan
        return False


def _strip_thousands(s: str) -> str:
    """Remove commas that separate thousands (`1,000,000`), repeatedly until none is left."""
    while True:
        nxt = _THOUSANDS.sub(r"\1\3\4", s)
        if nxt == s:
            return nxt
        s = nxt


def _str_is_int(s: str) -> bool:
    try:
        x = float(_strip_thousands(s))
        return abs(x - int(round(x))) <= 1e-7
    except (ValueError, OverflowError):
        return False


def _latex_to_text(s: str) -> str:
    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    s = latex2text.LatexNodes2Text().latex_to_text(s)
    for symbol, word in _LATEX_SYMBOLS:
        s = s.replace(symbol, word)
    return s.strip()


def sympy_normalise(s: str) -> str:
    """The grader's `_normalize`: text answers, units and LaTeX reduced to a sympy-readable form."""
    body = unwrap_text(s)
    if body is not None:
        s = body
    s = s.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    s = s.replace(" or ", " , ").replace(" and ", " , ")
    s = s.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for unit in _UNIT_RES:
        s = unit.sub("", s)
    s = _CIRC.sub("", s)
    if s and s[0] == "{" and s[-1] == "}":
        s = s[1:-1]
    s = _THIN_SPACE.sub("", s)
    if _is_float(s) and _is_int(float(s)):
        s = str(int(round(float(s))))
    if "\\" in s:
        try:
            s = _latex_to_text(s)
        except Exception:  # noqa: BLE001 - the reference keeps the text on any parser failure
            pass
    s = _DASH_SPACES.sub("-", s)
    s = _MIXED_NUMBER.sub(r"\1+\2", s)  # "7 3/4" -> "7+3/4"
    s = s.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(s):
        s = str(int(float(s.replace(",", ""))))
    return s


def _allow_sympy(expr: str) -> bool:
    """The reference refuses more than two unknown letters and powers that could explode."""
    letters = {ch for ch in expr.replace("sqrt", "").replace("frac", "") if ch.isalpha()}
    if len(letters) > 2 or any(bad in expr for bad in _BAD_SUBSTRINGS):
        return False
    return not any(bad.search(expr) for bad in _BAD_RES)


def _equal_under_sympy(gold: str, given: str) -> bool:
    expr = f"({gold})-({given})"
    try:
        if not _allow_sympy(expr):
            return False
        transformations = sympy_parser.standard_transformations + (
            sympy_parser.implicit_multiplication_application,)
        diff = sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transformations)
        return sympy.simplify(diff) == 0
    except Exception:  # noqa: BLE001 - the reference counts any parse/simplify failure as unequal
        return False


def _split_tuple(s: str) -> list[str]:
    s = _strip_thousands(s)
    if not s:
        return []
    if (len(s) > 2 and s[0] in _TUPLE_CHARS and s[-1] in _TUPLE_CHARS
            and not any(ch in s[1:-1] for ch in _TUPLE_CHARS)):
        return [elem.strip() for elem in s[1:-1].split(",")]
    return [s]


def sympy_equal(given: str, gold: str) -> bool:
    """`grade_answer_sympy(given, gold)`. Meant for an isolation child: it may run for long."""
    if sympy is None or latex2text is None:
        raise RuntimeError("the bgpo math grader needs sympy and pylatexenc (pip install 'bgpo[math]' pylatexenc)")
    gold_n, given_n = sympy_normalise(gold), sympy_normalise(given)
    if gold_n == given_n:
        return True
    if not given_n:
        return False
    gold_elems, given_elems = _split_tuple(gold_n), _split_tuple(given_n)
    if len(gold_elems) > 1 and (gold_n[0] != given_n[0] or gold_n[-1] != given_n[-1]):
        return False  # interval brackets must agree
    if len(gold_elems) != len(given_elems):
        return False
    for gold_elem, given_elem in zip(gold_elems, given_elems, strict=True):
        if _FRACTION.search(gold_elem) and _FRACTION.search(given_elem):
            ok = gold_elem == given_elem  # unreduced fractions are wrong: no simplify here
        elif _str_is_int(gold_elem) != _str_is_int(given_elem):
            ok = False  # an integer gold needs an integer answer, strictly
        else:
            ok = _equal_under_sympy(gold_elem, given_elem)
        if not ok:
            return False
    return True
