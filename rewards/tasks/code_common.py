"""What HumanEval and MBPP share: pulling code out of a completion and scoring it in the sandbox.

Extraction (same for the `bgpo`, `d1` and `lenient` presets): the last ```python (or bare ```) fenced block
that defines the entry point, else the last fenced block that defines any function, else the last
fenced block; an unclosed final fence counts (generation may stop inside it). Without fences the
whole completion is the code, cut at MBPP's `[DONE]` and unwrapped from the few-shot's quotes.

Scoring: 1.0 only if every test passes in the sandbox (rewards.md section 1), else 0 with status
wrong / timeout / error / no_answer / sandbox_unavailable. Nothing here runs candidate code in
this process, and nothing here parses it there either: ast.parse of candidate text runs in an
isolation child under the deadline (`isolated`), because CPython's parser is not linear on every
input. Finding the fenced blocks is one forward pass (`fences`), linear in the completion.
"""

from __future__ import annotations

import ast
import re
import time
from dataclasses import replace

from rewards.isolation import CallResult, run_isolated
from rewards.sandbox import run_tests
from rewards.types import RewardResult, ScoringOptions

_FENCE_MARK = "```"
_LANG = re.compile(r"[ \t]*([A-Za-z0-9_+-]*)")  # the language tag at the start of a fence line
_CODE_LANGS = ("", "python", "py", "python3")


def fences(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every fenced block, in order: what
    `re.findall(r"```[ \\t]*([A-Za-z0-9_+-]*)[^\\n]*\\n(.*?)(?:```|\\Z)", text, re.S)` returns,
    found with `str.find` in one forward pass. That regex is quadratic when a fence line has no
    newline (its two runs split the rest of the text every way before failing: ``` and 200,000
    letters took 10 s here, 38 s in the issue's run), and again for each of many ``` with no
    newline after them.

    A block opens at a ``` that has a newline somewhere after it; its tag is the longest
    `[A-Za-z0-9_+-]*` after optional blanks (the rest of that line is ignored); its body runs from
    after that newline to the next ``` or, unterminated, to the end of the text. When a ``` has no
    newline after it, no later one has either, so the scan stops there.
    """
    found: list[tuple[str, str]] = []
    pos = 0
    while True:
        start = text.find(_FENCE_MARK, pos)
        if start == -1:
            return found
        newline = text.find("\n", start + len(_FENCE_MARK))
        if newline == -1:
            return found
        lang = _LANG.match(text, start + len(_FENCE_MARK), newline).group(1)
        end = text.find(_FENCE_MARK, newline + 1)
        if end == -1:
            found.append((lang, text[newline + 1:]))
            return found
        found.append((lang, text[newline + 1:end]))
        pos = end + len(_FENCE_MARK)


def fenced_blocks(text: str) -> list[str]:
    """Bodies of ```python / ``` blocks, in order (an unterminated last block included)."""
    return [body for lang, body in fences(text) if lang.lower() in _CODE_LANGS]


def function_names(code: str) -> set[str]:
    """Names of the top-level functions `code` defines (empty if it does not parse)."""
    tree = try_parse(code)
    if tree is None:
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def try_parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # all mean "not valid code"
        return None


def extract_code(completion: str, entry_point: str | None) -> str:
    """The code a completion proposes ('' if none); see the module docstring for the rule."""
    blocks = fenced_blocks(completion)
    if blocks:
        # From the last block back, parsing each block once: the first that defines the entry
        # point wins; else the first (i.e. last in the text) that defines any function.
        any_def = None
        for block in reversed(blocks):
            names = function_names(block)
            if entry_point is not None and entry_point in names:
                return block
            if any_def is None and names:
                any_def = block
                if entry_point is None:
                    return block
        return any_def if any_def is not None else blocks[-1]
    code = completion.split("[DONE]", 1)[0]
    stripped = code.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == "'":
        code = stripped[1:-1]  # MBPP few-shot answers are written as '...code...'
    return code.replace("\r\n", "\n")


def isolated(spec: str, *args: object, options: ScoringOptions) -> tuple[CallResult, ScoringOptions]:
    """Run `spec(*args)`, a step that parses candidate text (`extract_code`, HumanEval's
    `candidate_program`), in an isolation child under `options.deadline_s`. Returns its result and
    `options` with the deadline left for the sandbox: the deadline covers parsing and running.

    Why a child: ast.parse is not linear on every input. CPython 3.11's parser is quadratic in the
    replacement fields of one f-string (66,000 `{x}`: 2.2 s a parse), and HumanEval parses a
    completion up to eight times: 16 s to score one, holding the scoring process's GIL throughout.
    """
    call = run_isolated(spec, *args, deadline_s=options.deadline_s)
    return call, replace(options, deadline_s=max(0.0, options.deadline_s - call.seconds))


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
