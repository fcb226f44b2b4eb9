"""The bgpo and d1 presets against the reference projects' own reward functions.

tests/fixtures/rewards/golden/scores.jsonl holds (task, row, completion, expected score) rows whose
expected scores come from running DARE's `math_rm` (BGPO) and d1's reward functions locally on
varied completions; prompts_d1.jsonl holds d1's own prompts for a few rows. How they were made:
the README next to them. Every row must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards import score
from rewards.tasks.prompts import prompt_for
from rewards.types import ScoringOptions

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "rewards" / "golden"
ROWS = [json.loads(line) for line in (GOLDEN / "scores.jsonl").read_text().splitlines()]
PROMPTS = [json.loads(line) for line in (GOLDEN / "prompts_d1.jsonl").read_text().splitlines()]
OPTIONS = ScoringOptions(deadline_s=30.0)  # generous: a loaded CI machine must not turn a sympy
# check into a timeout, which would be a different score for a reason that is not the rule


def test_fixture_covers_every_task_and_both_outcomes():
    for task in ("gsm8k", "math", "countdown", "sudoku"):
        rows = [r for r in ROWS if r["task"] == task]
        assert len(rows) >= 150, task
        for preset in ("bgpo", "d1"):
            assert len({r["expected"][preset] for r in rows}) >= 2, (task, preset)


@pytest.mark.parametrize("preset", ["bgpo", "d1"])
@pytest.mark.parametrize("task", ["gsm8k", "math", "countdown", "sudoku"])
def test_preset_matches_reference_on_every_row(task, preset):
    mismatches = []
    for row in ROWS:
        if row["task"] != task:
            continue
        expected = row["expected"][preset]
        got = score(task, row["completion"], row["item"], preset=preset, options=OPTIONS)
        if got.status in ("timeout", "error") or abs(got.score - expected) > 1e-9:
            mismatches.append((row["id"], row["completion"][:80], expected, got.score, got.status, got.detail))
    assert not mismatches, f"{len(mismatches)} rows differ from the reference:\n" + "\n".join(
        map(repr, mismatches[:20]))


def test_d1_prompts_are_d1s_own():
    for case in PROMPTS:
        assert prompt_for(case["task"], case["row"], "d1") == case["d1_prompt"], case["task"]


@pytest.mark.parametrize("task", ["gsm8k", "math", "countdown", "sudoku"])
def test_bgpo_prompts_are_the_rows_own(task):
    """DARE applies the chat template to the parquet row's messages and adds nothing."""
    for case in PROMPTS:
        if case["task"] == task:
            assert prompt_for(task, case["row"], "bgpo") == case["row"]["prompt"]
