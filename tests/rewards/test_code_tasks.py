"""HumanEval and MBPP tasks: extraction conventions, entry points, scoring, never raising.

Rows come from tests/fixtures/rewards/code_rows.json (copied from the d1/BGPO parquet test sets,
with known-correct solutions)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import rewards.sandbox.runner as runner_mod
from rewards.sandbox import CodeSandbox, SandboxConfig
from rewards.tasks.base import Task
from rewards.tasks.code_common import extract_code
from rewards.tasks.humaneval import (
    HumanEvalTask,
    build_program,
    check_source,
    entry_point,
    helper_source,
    prompt_code,
)
from rewards.tasks.mbpp import MBPPTask
from rewards.tasks.mbpp import entry_point as mbpp_entry
from rewards.types import STATUSES, ScoringOptions

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rewards" / "code_rows.json"
DATA = json.loads(FIXTURE.read_text())
HE = {r["entry_point"]: r for r in DATA["humaneval"]}
MB = {r["entry_point"]: r for r in DATA["mbpp"]}
OPT = ScoringOptions(deadline_s=5)
needs_sandbox = pytest.mark.skipif(shutil.which("bwrap") is None or shutil.which("prlimit") is None,
                                   reason="bubblewrap/prlimit not installed")


def he_score(completion: str, name: str = "has_close_elements", preset: str = "bgpo"):
    return HumanEvalTask().score(completion, HE[name]["row"], preset=preset, options=OPT)


def mbpp_score(completion: str, name: str = "remove_Occ", preset: str = "bgpo"):
    return MBPPTask().score(completion, MB[name]["row"], preset=preset, options=OPT)


def full_function(rec: dict) -> str:
    return prompt_code(rec["row"]) + rec["solution_body"]


def test_task_classes():
    assert HumanEvalTask.name == "humaneval" and MBPPTask.name == "mbpp"
    assert isinstance(HumanEvalTask(), Task) and isinstance(MBPPTask(), Task)
    assert set(HumanEvalTask.presets) == set(MBPPTask.presets) == {"bgpo", "d1", "lenient"}


def test_entry_points_come_from_the_prompt():
    for name, rec in HE.items():  # includes helpers-before-entry prompts (10, 38) and 32
        assert entry_point(prompt_code(rec["row"])) == name
    for name, rec in MB.items():
        assert mbpp_entry(rec["row"]) == name


def test_extract_code_conventions():
    fenced = "Sure.\n```python\ndef g():\n    pass\n```\ntext\n```python\ndef f():\n    return 1\n```"
    assert extract_code(fenced, "g").startswith("def g")  # the block defining the entry point
    assert extract_code(fenced, None).startswith("def f")  # else the last block with a def
    assert extract_code("```python\ndef f():\n    return 1", "f").startswith("def f")  # unclosed
    assert extract_code(" 'def f():\r\n  return 1' \n[DONE] \n", "f") == "def f():\n  return 1"
    assert extract_code("    return 1\n", "f") == "    return 1\n"  # a body continuation


@needs_sandbox
@pytest.mark.parametrize("name", sorted(HE))
@pytest.mark.parametrize("preset", ["bgpo", "d1"])
def test_humaneval_correct_solutions_score_one(name, preset):
    rec = HE[name]
    body = he_score(rec["solution_body"], name, preset)  # continuation of the prompt
    assert (body.score, body.status) == (1.0, "ok"), body.detail
    fenced = he_score(f"Here it is:\n```python\n{full_function(rec)}```\nDone.", name, preset)
    assert (fenced.score, fenced.status) == (1.0, "ok"), fenced.detail
    assert fenced.extra["entry_point"] == name and fenced.extra["sandboxed"] is True


@needs_sandbox
def test_humaneval_wrong_and_missing_answers():
    wrong = he_score("```python\ndef has_close_elements(numbers, threshold):\n    return False\n```")
    assert (wrong.score, wrong.status) == (0.0, "wrong")
    assert he_score("").status == "no_answer"
    assert he_score("I don't know.").status == "wrong"
    assert he_score("```python\ndef other():\n    return 1\n```").status == "wrong"


@needs_sandbox
def test_humaneval_unindented_body_is_accepted():
    body = HE["has_close_elements"]["solution_body"]
    flat = "\n".join(line[4:] if line.startswith("    ") else line for line in body.splitlines())
    assert he_score(flat).status == "ok"


@needs_sandbox
def test_humaneval_redefining_a_prompt_helper_does_not_fool_check():
    """HumanEval/32's check() calls poly(); redefining poly to return 0 must not pass."""
    hack = "```python\ndef poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0\n```"
    result = he_score(hack, "find_zero")
    assert (result.score, result.status) == (0.0, "wrong")


@needs_sandbox
def test_humaneval_always_equal_object_fails():
    hack = ("```python\nclass A(list):\n    def __eq__(self, o):\n        return True\n"
            "def has_close_elements(numbers, threshold):\n    return A()\n```")
    assert he_score(hack).status == "wrong"


@needs_sandbox
@pytest.mark.parametrize("name", sorted(MB))
def test_mbpp_correct_solutions_score_one(name):
    sol = MB[name]["solution"]
    for completion, preset in ((f"```python\n{sol}```", "bgpo"),
                               (" '" + sol.replace("\n", "\r\n") + "' \n[DONE] \n\n", "d1"),
                               (sol + "\n[DONE]", "bgpo")):
        result = mbpp_score(completion, name, preset)
        assert (result.score, result.status) == (1.0, "ok"), (completion, result.detail)
        assert result.extra["tests_passed"] == result.extra["tests_total"] == 3


@needs_sandbox
def test_mbpp_partial_and_wrong_answers():
    partial = mbpp_score("```python\ndef remove_Occ(s, ch):\n    return 'heo'\n```")
    assert (partial.score, partial.status) == (0.0, "wrong")  # 1 of 3 tests is still 0
    assert partial.extra["tests_passed"] == 1
    assert mbpp_score("").status == "no_answer"
    assert mbpp_score("```python\nimport sys\nsys.exit(0)\n```").status == "wrong"


@needs_sandbox
def test_timeout_status():
    loop = "```python\ndef remove_Occ(s, ch):\n    while True:\n        pass\n```"
    result = MBPPTask().score(loop, MB["remove_Occ"]["row"], preset="bgpo",
                              options=ScoringOptions(deadline_s=1.0))
    assert (result.score, result.status) == (0.0, "timeout") and result.seconds < 2.5


@pytest.mark.parametrize("completion", [
    None, 42, "", "```", "```python\n", "\x00\x01\x02", "def (", "[DONE]", "'''", "```python\n" +
    "(" * 5000 + "\n```", "x" * 3_000_000, "def f():\n" + "    pass\n" * 200_000,
])
def test_tasks_never_raise(completion):
    for task, row in ((HumanEvalTask(), HE["has_close_elements"]["row"]),
                      (MBPPTask(), MB["remove_Occ"]["row"])):
        result = task.score(completion, row, preset="bgpo", options=OPT)
        assert result.status in STATUSES and result.score == 0.0


def test_malformed_rows_and_presets_are_errors():
    assert HumanEvalTask().score("x", {"prompt": []}, preset="bgpo", options=OPT).status == "error"
    bad = dict(MB["remove_Occ"]["row"], reward_model={"ground_truth": "not json"})
    assert MBPPTask().score("x", bad, preset="bgpo", options=OPT).status == "error"
    assert he_score("x", preset="nope").status == "error"
    assert mbpp_score("x", preset="nope").status == "error"


def test_sandbox_unavailable_is_fail_closed(monkeypatch):
    broken = CodeSandbox(SandboxConfig(python="/nonexistent/bin/python3"))
    monkeypatch.setattr(runner_mod, "_default", broken)
    sol = MB["remove_Occ"]["solution"]
    result = mbpp_score(f"```python\n{sol}```")
    assert (result.score, result.status) == (0.0, "sandbox_unavailable")
    if shutil.which("prlimit"):
        opened = MBPPTask().score(f"```python\n{sol}```", MB["remove_Occ"]["row"], preset="bgpo",
                                  options=ScoringOptions(deadline_s=5, allow_unsandboxed=True))
        assert (opened.score, opened.status) == (1.0, "ok"), opened.detail
        assert opened.extra["unsandboxed"] is True


def test_build_program_rejects_the_bare_stub():
    rec = HE["has_close_elements"]
    assert build_program("", prompt_code(rec["row"]), "has_close_elements") is None


def test_check_source_carries_helpers_and_drops_typing_imports_used_only_in_annotations():
    prompt = ("from typing import List, Tuple\nimport math\nfrom typing import Callable\n\n"
              "def poly(xs: List[float], x: float) -> float:\n    return sum(xs)\n\n"
              "def helper(f: Callable) -> Tuple:\n    return isinstance(f, Callable)\n\n"
              "def entry(xs: List[int]) -> int:\n    \"\"\"doc\"\"\"\n")
    helpers = helper_source(prompt, "entry")
    assert "import math" in helpers and "def poly" in helpers and "def entry" not in helpers
    assert "List" not in helpers.split("def poly")[0]  # used only in annotations: dropped
    assert "from typing import Callable" in helpers  # used at run time (isinstance): kept
    source = check_source(prompt, "entry", "def check(candidate):\n    assert candidate([1]) == 1\n")
    assert source.startswith("from __future__ import annotations\n")
    scope = {"entry": lambda xs: 1}
    exec(compile(source, "<check>", "exec"), scope)  # annotations never evaluated: no NameError
    assert scope["poly"]([1.0, 2.0], 0.0) == 3.0
    prompt = '"""A module docstring."""\nfrom __future__ import division\ndef entry():\n    pass\n'
    future = check_source(prompt, "entry", "def check(c):\n    pass\n")
    assert "division" in future
    compile(future, "<check>", "exec")  # the prompt's own __future__ import moved to the top
    for rec in HE.values():  # the fixture rows' checks still compile
        compile(check_source(prompt_code(rec["row"]), rec["entry_point"],
                             rec["row"]["reward_model"]["ground_truth"]), "<check>", "exec")
