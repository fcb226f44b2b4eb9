"""math-verify equivalence check, meant to run inside an `IsolationPool` child.

Runs math-verify with its own (signal-based, main-thread-only) timeouts disabled: the pool's
deadline and SIGKILL bound it instead. Gold parses are cached because a GRPO group scores several
completions against one gold answer.

Do not call `verify` in a process that also serves requests: a nested power can hold the GIL for
minutes. Use `rewards.isolation.run_isolated("rewards.mathcheck:verify", ...)`.
"""

from __future__ import annotations

import functools
import logging

try:
    from math_verify import parse
    from math_verify import verify as mv_verify
except ImportError:  # the `math` extra is optional; verify() then says what is missing
    parse = mv_verify = None

# math-verify warns on every call that its timeouts are off; that is deliberate here.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _wrap(latex: str) -> str:
    # Wrapping in \boxed{} makes math-verify read the whole string as one answer rather than
    # searching it for the first number.
    return "\\boxed{" + latex + "}"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    return parse(_wrap(gold), parsing_timeout=None)


def verify(gold: str, answer: str) -> bool:
    """True when `answer` is mathematically equal to `gold` (gold first: math-verify is not
    symmetric)."""
    if parse is None:
        raise RuntimeError("math-verify is not installed (pip install 'bgpo[math]')")
    gold_parsed = _parse_gold(gold)
    answer_parsed = parse(_wrap(answer), parsing_timeout=None)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(mv_verify(gold_parsed, answer_parsed, timeout_seconds=None))
