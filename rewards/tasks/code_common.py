"""What HumanEval and MBPP share: pulling code out of a completion and scoring it in the sandbox.

Extraction (same for the `bgpo`, `d1` and `lenient` presets): the last ```python (or bare ```) fenced block
that defines the entry point, else the last fenced block that defines any function, else the last
fenced block; an unclosed final fence counts (generation may stop inside it). Without fences the
whole completion is the code, cut at MBPP's `[DONE]` and unwrapped from the few-shot's quotes.

Scoring: 1.0 only if every test passes in the sandbox (rewards.md section 1), else 0 with status
wrong / timeout / error / no_answer / sandbox_unavailable. Nothing here runs candidate code in
this process; ast.parse is the only thing that touches it, on text capped in length.
"""

from __future__ import annotations

import ast
import re
import time

from rewards.sandbox import run_tests
from rewards.types import RewardResult, ScoringOptions

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CODE_LANGS = ("", "python", "py", "python3")


def fenced_blocks(text: str) -> list[str]:
    """Bodies of ```python / ``` blocks, in order (an unterminated last block included)."""
    return [body for lang, body in _FENCE.findall(text) if lang.lower() in _CODE_LANGS]


def defines(code: str, name: str | None) -> bool:
    """True if `code` parses and defines a top-level function `name` (any function if None)."""
    tree = try_parse(code)
    if tree is None:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
               and (name is None or n.name == name) for n in tree.body)


def try_parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # all mean "not valid code"
        return None


def extract_code(completion: str, entry_point: str | None) -> str:
    """The code a completion proposes ('' if none); see the module docstring for the rule."""
    blocks = fenced_blocks(completion)
    if blocks:
        for want in (entry_point, None):
            hits = [b for b in blocks if defines(b, want)]
            if hits:
                return hits[-1]
        return blocks[-1]
    code = completion.split("[DONE]", 1)[0]
    stripped = code.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == "'":
        code = stripped[1:-1]  # MBPP few-shot answers are written as '...code...'
    return code.replace("\r\n", "\n")


def score_in_sandbox(program: str, tests: list[str], options: ScoringOptions, *,
                     entry: str | None, started: float, extra: dict) -> RewardResult:
    """Run `program` against `tests` in the sandbox and map the outcome to a RewardResult."""
    run = run_tests(program, tests, deadline_s=options.deadline_s,
                    allow_unsandboxed=options.allow_unsandboxed,
                    guard=(entry,) if entry else ())
    extra = dict(extra, tests_passed=run.passed, tests_total=run.total, sandboxed=run.sandboxed)
    if not run.sandboxed:
        extra["unsandboxed"] = True  # allow_unsandboxed was used: this score is not isolated
    score = 1.0 if run.status == "ok" else 0.0
    return RewardResult(score=score, status=run.status, detail=run.detail,
                        seconds=time.monotonic() - started, extra=extra)


def failure(status: str, detail: str, started: float, **extra: object) -> RewardResult:
    return RewardResult(score=0.0, status=status, detail=detail,
                        seconds=time.monotonic() - started, extra=dict(extra))
