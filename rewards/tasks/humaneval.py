"""HumanEval: complete a Python function; reward 1.0 iff the row's check() passes in the sandbox.

Rows (d1/BGPO parquet): prompt = [{"role": "user", "content": "Complete the following python
code:\\n<imports, helpers, def entry(...): docstring>"}], reward_model.ground_truth = the
check(candidate) source. Rows carry no entry point: it is the last top-level function of the
prompt's code (HumanEval/10, /38, /50 define helpers before it).

The completion may be a full function (fenced or not) or a continuation of the prompt's body; the
program run is the prompt's code followed by the completion's code either way, so prompt imports
and helpers are there. The test runs the prompt's helpers again in the test's own scope, so a
candidate that redefines a helper the check relies on (HumanEval/32's poly) cannot fool it.
"""

from __future__ import annotations

import ast
import time

from rewards.tasks.base import Task
from rewards.tasks.code_common import extract_code, failure, isolated, score_in_sandbox, try_parse
from rewards.types import RewardResult, ScoringOptions

PREAMBLE = "Complete the following python code:\n"


def prompt_code(item: dict) -> str:
    """The Python part of the row's prompt (the text after the instruction line)."""
    content = item["prompt"][-1]["content"]
    return content[len(PREAMBLE):] if content.startswith(PREAMBLE) else content


def entry_point(code: str) -> str | None:
    """Name of the last top-level function defined in the prompt's code."""
    tree = try_parse(code)
    if tree is None:
        return None
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return names[-1] if names else None


def helper_source(code: str, entry: str) -> str:
    """The prompt's code minus the entry point's stub: imports, helpers, constants."""
    tree = try_parse(code)
    if tree is None:
        return ""
    keep = [ast.get_source_segment(code, n) or "" for n in tree.body
            if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry)]
    return "\n\n".join(keep)


def build_program(completion_code: str, prompt: str, entry: str) -> str | None:
    """The program to run, or None if no arrangement of prompt + completion is valid Python."""
    candidates = []
    tree = try_parse(completion_code)
    full = tree is not None and any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry
        for n in tree.body)
    if full:  # the completion redefines the function; keep the prompt's imports and helpers
        candidates.append(prompt.rstrip() + "\n\n" + completion_code)
    candidates.append(prompt + completion_code)  # body continuation, as in the original harness
    # A body written without its leading indentation.
    indented = "\n".join("    " + line if line.strip() else line
                         for line in completion_code.splitlines())
    candidates.append(prompt + indented)
    for program in candidates:
        if try_parse(program) is not None and _entry_has_body(program, entry):
            return program
    return None


def candidate_program(completion: str, prompt: str, entry: str) -> tuple[str, str | None]:
    """The completion's code and the program built from it (None when no arrangement is valid).
    It parses candidate text, so HumanEvalTask runs it in an isolation child (code_common.isolated)."""
    code = extract_code(completion, entry)
    return code, (build_program(code, prompt, entry) if code.strip() else None)


def _entry_has_body(program: str, entry: str) -> bool:
    """False if the last definition of `entry` is still the prompt's docstring-only stub."""
    tree = try_parse(program)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name == entry] if tree else []
    if not defs:
        return False
    body = defs[-1].body
    return not (len(body) == 1 and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant))


class HumanEvalTask(Task):
    """HumanEval (164 problems); presets bgpo, d1 and lenient use the same all-tests-pass rule."""

    name = "humaneval"
    presets = ("bgpo", "d1", "lenient")

    def score(self, completion: str, item: dict, *, preset: str,
              options: ScoringOptions) -> RewardResult:
        started = time.monotonic()
        try:
            prompt = prompt_code(item)
            entry = entry_point(prompt)
            check = item["reward_model"]["ground_truth"]
            if not entry or not isinstance(check, str) or "def check" not in check:
                return failure("error", "row has no entry point or no check()", started)
        except (KeyError, IndexError, TypeError) as e:
            return failure("error", f"malformed humaneval row: {type(e).__name__}: {e}", started)
        if preset not in self.presets:
            return failure("error", f"unknown preset {preset!r} for humaneval", started)
        call, options = isolated("rewards.tasks.humaneval:candidate_program",
                                 str(completion)[: options.max_completion_chars], prompt, entry,
                                 options=options)
        if call.status != "ok":
            return failure(call.status, f"reading the code: {call.detail}", started, entry_point=entry)
        code, program = call.value
        if not code.strip():
            return failure("no_answer", "no code in the completion", started, entry_point=entry)
        if program is None:
            return failure("wrong", f"no valid definition of {entry}() in the completion",
                           started, entry_point=entry)
        test = f"{helper_source(prompt, entry)}\n\n{check}\n\ncheck({entry})\n"
        return score_in_sandbox(program, [test], options, entry=entry, started=started,
                                extra={"entry_point": entry})
