"""The Countdown reward of BGPO and d1, ported exactly, with Python's `eval` made safe.

References: dllm-reasoning/d1 at 837888f, `diffu-grpo/reward_func.py` (`compute_score`), and
yjyddq/DARE at 83ae8a305a53a914cce563aedceeac88566891cb, `verl/utils/reward_score/math_reward.py`
(`countdown_reward_func`, called by `math_rm` for data_source "countdown"). The two are the same
rule:
- the answer is the last `re.findall(r"<answer>(.*?)</answer>", DOTALL)` match, stripped; none -> 0;
- every `\\d+` run in it, as integers, must be the puzzle's numbers as a multiset, else 0.1;
- it must consist of digits, `+ - * / ( ) .` and whitespace and `eval` to within 1e-5 of the
  target: 1.0; any evaluation error or another value: 0.1.
So `2.5` counts as the numbers 2 and 5, `**` and `//` are allowed, `/` is float division.

Ours evaluates the same Python expression with Python's own parser and operators on Python's own
numbers, so every result and every error is the one `eval` gives, except for powers whose result
would exceed `MAX_POW_BITS` (`99**98**97` hangs the references for ever): those count as an
evaluation error, 0.1, which is what the references give for such an answer whenever they finish,
unless the target is 0 or -1 (an underflowing `a / huge` or `a // huge`). A value that is not a
number (`()*3` evaluates to `()`) scores 0.1 as in d1; DARE raises TypeError there instead.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from rewards.tasks.answers import last_answer_match
from rewards.types import RewardResult

FORMAT_SCORE = 0.1
MAX_POW_BITS = 1_000_000  # an integer power beyond this many bits is not computed
_ALLOWED = re.compile(r"^[\d+\-*/().\s]+$")
_NUMBERS = re.compile(r"\d+")
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class _EvalError(Exception):
    """What `eval` would have raised (or would have hung on)."""


def uses_numbers(equation: str, numbers: list[int]) -> bool:
    """The references' `validate_equation`: the integers of all digit runs are `numbers`."""
    try:
        found = [int(n) for n in _NUMBERS.findall(equation)]
    except ValueError:  # a digit run too long for int(): the reference's bare except
        return False
    return sorted(found) == sorted(numbers)


def evaluate(equation: str):
    """The value `eval(equation, {"__builtins__": None}, {})` returns after the reference's
    character check; _EvalError where it raises."""
    if not _ALLOWED.match(equation):
        raise _EvalError("invalid characters")
    try:
        tree = ast.parse(equation, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise _EvalError(f"not an expression: {type(exc).__name__}") from exc
    try:
        return _value(tree.body)
    except (ArithmeticError, TypeError, ValueError, MemoryError, RecursionError) as exc:
        raise _EvalError(f"{type(exc).__name__}: {exc}") from exc


def _value(node: ast.AST):
    if isinstance(node, ast.Constant):
        return node.value  # int, float or Ellipsis (`...` passes the character check)
    if isinstance(node, ast.Tuple):
        return tuple(_value(e) for e in node.elts)  # `()`
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        ops = []  # `- - - 3` may nest thousands deep: walk the chain without recursing
        while isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            ops.append(_UNARY[type(node.op)])
            node = node.operand
        value = _value(node)
        for op in reversed(ops):
            value = op(value)
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Call):
        # `(1)(2)`: eval evaluates the callee and arguments, then fails to call a number.
        _value(node.func)
        for arg in node.args:
            _value(arg)
        raise TypeError("object is not callable")
    raise _EvalError(f"{type(node).__name__} cannot come from the allowed characters")


def _check_power(base, exponent) -> None:
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and exponent * math.log2(abs(base)) > MAX_POW_BITS):
        raise _EvalError(f"power of more than {MAX_POW_BITS} bits")


def score(completion: str, numbers: list[int], target: int) -> RewardResult:
    """The references' Countdown reward for one completion."""
    match = last_answer_match(completion)
    if match is None:
        return RewardResult(0.0, "no_answer", "no <answer>...</answer>")
    equation = match.strip()
    extra = {"answer": equation[:200]}
    if not uses_numbers(equation, numbers):
        return RewardResult(FORMAT_SCORE, "wrong", f"numbers are not {sorted(numbers)}", extra=extra)
    try:
        value = evaluate(equation)
        close = abs(value - target) < 1e-5
    except _EvalError as exc:
        return RewardResult(FORMAT_SCORE, "wrong", f"eval fails: {exc}", extra=extra)
    except (TypeError, ArithmeticError) as exc:  # a non-number value (`()`, `...`)
        return RewardResult(FORMAT_SCORE, "wrong", f"value is not a number: {exc}", extra=extra)
    extra["value"] = _describe(value)
    if close:
        return RewardResult(1.0, "ok", extra=extra)
    return RewardResult(FORMAT_SCORE, "wrong", f"evaluates to {extra['value']}, target {target}", extra=extra)


def _describe(value) -> str:
    """A short text for a value; repr() of a huge int raises (Python's digit limit) and is long."""
    if isinstance(value, int) and value.bit_length() > 200:
        return f"<integer of {value.bit_length()} bits>"
    return repr(value)[:100]
