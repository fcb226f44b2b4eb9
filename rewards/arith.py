"""A bounded evaluator for arithmetic answers (Countdown): + - * / over integer constants.

Why not `eval`: d1 evaluates Countdown answers with `eval`, and `99**98**97` hangs it for many
seconds. Here the text is checked against a character whitelist and a length cap, parsed with
`ast`, and only BinOp(+,-,*,/), unary +/- and non-negative integer literals are accepted; the
arithmetic is exact (`Fraction`), and any intermediate value beyond `MAX_BITS` is rejected, so
every input is answered in well under a millisecond per character.

It does not simplify, round or accept floats, `**`, `//`, `%`, names or calls: those are errors.
"""

from __future__ import annotations

import ast
from fractions import Fraction

MAX_CHARS = 1000  # longer expressions are refused before parsing
MAX_LITERAL_DIGITS = 30  # refuses `10**9`-sized constants written out in full as well
MAX_BITS = 1024  # refuses intermediate numerators/denominators larger than this
_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\n")


class ArithError(ValueError):
    """The expression is not a valid bounded arithmetic expression; the message says why."""


def parse_expression(text: str) -> ast.expr:
    """Parse and validate; raises ArithError on anything outside the grammar or the bounds."""
    if len(text) > MAX_CHARS:
        raise ArithError(f"expression longer than {MAX_CHARS} characters")
    bad = set(text) - _ALLOWED_CHARS
    if bad:
        raise ArithError(f"disallowed characters: {''.join(sorted(bad))[:20]!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ArithError(f"not an expression: {type(exc).__name__}") from exc
    _check(tree.body, depth=0)
    return tree.body


def _check(node: ast.AST, depth: int) -> None:
    if depth > 100:
        raise ArithError("expression nested too deeply")
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            raise ArithError(f"operator {type(node.op).__name__} not allowed")
        _check(node.left, depth + 1)
        _check(node.right, depth + 1)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise ArithError(f"operator {type(node.op).__name__} not allowed")
        _check(node.operand, depth + 1)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        if node.value.bit_length() > MAX_LITERAL_DIGITS * 4:
            raise ArithError("integer literal too large")
    else:
        raise ArithError(f"{type(node).__name__} not allowed")


def literals(node: ast.expr) -> list[int]:
    """The integer constants of a validated expression, in source order."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def evaluate(node: ast.expr) -> Fraction:
    """Exact value of a validated expression; ArithError on division by zero or oversize values."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        value = evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.BinOp)  # guaranteed by parse_expression
    left, right = evaluate(node.left), evaluate(node.right)
    if isinstance(node.op, ast.Add):
        result = left + right
    elif isinstance(node.op, ast.Sub):
        result = left - right
    elif isinstance(node.op, ast.Mult):
        result = left * right
    else:
        if right == 0:
            raise ArithError("division by zero")
        result = left / right
    if result.numerator.bit_length() > MAX_BITS or result.denominator.bit_length() > MAX_BITS:
        raise ArithError(f"intermediate value larger than {MAX_BITS} bits")
    return result


def evaluate_text(text: str) -> Fraction:
    """Parse, validate and evaluate in one step."""
    return evaluate(parse_expression(text))
