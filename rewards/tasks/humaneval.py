"""HumanEval: complete a Python function; reward 1.0 iff the row's check() passes in the sandbox.

Rows (d1/BGPO parquet): prompt = [{"role": "user", "content": "Complete the following python
code:\\n<imports, helpers, def entry(...): docstring>"}], reward_model.ground_truth = the
check(candidate) source. Rows carry no entry point: it is the last top-level function of the
prompt's code (HumanEval/10, /38, /50 define helpers before it).

The completion may be a full function (fenced or not) or a continuation of the prompt's body; the
program run is the prompt's code followed by the completion's code either way, so prompt imports
and helpers are there. The test (check_source) carries the prompt's helpers itself, and the
harness runs tests in its trusted process, apart from the candidate's (rewards/code_harness.py):
so a candidate that redefines a helper the check relies on (HumanEval/32's poly), or patches a
module the check imports (math, random), cannot fool it.
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
    """The prompt's code minus the entry point's stub: imports, helpers, constants.

    Imports from `typing` that nothing uses outside an annotation are left out: the test runs
    with postponed annotations (see check_source), where they do nothing, and importing typing
    would cost the harness's trusted process about 5 ms per run.
    """
    tree = try_parse(code)
    if tree is None:
        return ""
    body = [n for n in tree.body
            if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry)]
    used = _runtime_names(ast.Module(body=body, type_ignores=[]))
    body = [n for n in body if not (_imports_typing(n) and not used & _bound_names(n))]
    body.sort(key=lambda n: not (isinstance(n, ast.ImportFrom) and n.module == "__future__"))
    return "\n\n".join(ast.get_source_segment(code, n) or "" for n in body)  # futures first


def check_source(prompt: str, entry: str, check: str) -> str:
    """The test run in the harness's trusted process: the prompt's helpers (so a candidate that
    redefines one the check relies on, like HumanEval/32's poly, cannot fool it), the row's
    check() and its call on the entry point."""
    return (f"from __future__ import annotations\n{helper_source(prompt, entry)}\n\n{check}\n\n"
            f"check({entry})\n")


def _imports_typing(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.module == "typing" and node.level == 0
    return isinstance(node, ast.Import) and all(a.name == "typing" for a in node.names)


def _bound_names(node: ast.stmt) -> set[str]:
    """Names an import statement binds."""
    names = getattr(node, "names", [])
    return {a.asname or a.name.split(".")[0] for a in names}


def _runtime_names(tree: ast.AST) -> set[str]:
    """Names read anywhere except inside annotations (which postponed annotations never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            anns.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            anns.append(node.annotation)
        for ann in anns:
            if ann is not None:
                skip.update(id(n) for n in ast.walk(ann))
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in skip}


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
        return score_in_sandbox(program, [check_source(prompt, entry, check)], options,
                                entry=entry, started=started, extra={"entry_point": entry})
