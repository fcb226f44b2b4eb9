"""Procedural Sudoku and Countdown rows: certified, unique, deterministic, split correctly."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from rewards import score
from rewards.arith import evaluate_text
from rewards.generators import (
    all_grids,
    countdown_rows,
    reachable,
    solutions,
    split_grids,
    sudoku_rows,
)
from rewards.tasks.sudoku import is_valid_grid


def test_there_are_288_valid_grids():
    grids = all_grids()
    assert len(grids) == len(set(grids)) == 288
    assert all(map(is_valid_grid, grids))


def test_sudoku_rows_unique_scored_and_deterministic():
    rows = sudoku_rows(40, split="train", seed=3, blanks=(8, 12))
    for row in rows:
        puzzle, gold = row["extra_info"]["puzzle"], row["reward_model"]["ground_truth"]
        assert 8 <= puzzle.count("0") <= 12
        assert solutions(puzzle) == [gold]
        assert score("sudoku", f"<answer>{gold}</answer>", row).score == 1.0
        assert row["prompt"][0]["content"].endswith(f"puzzle: {puzzle}\n")
    assert rows == sudoku_rows(40, split="train", seed=3, blanks=(8, 12))
    assert rows != sudoku_rows(40, split="train", seed=4, blanks=(8, 12))
    compact = sudoku_rows(5, split="test", prompt_style="compact")
    assert compact[0]["prompt"][0]["content"] == compact[0]["extra_info"]["puzzle"]
    assert score("sudoku", compact[0]["reward_model"]["ground_truth"], compact[0],
                 preset="compact").score == 1.0


def test_sudoku_split_is_by_grid():
    train, test = split_grids(seed=0, test_fraction=0.2)
    assert len(train) + len(test) == 288 and not set(train) & set(test)
    test_rows = sudoku_rows(60, split="test", seed=0)
    assert {r["reward_model"]["ground_truth"] for r in test_rows} <= set(test)
    train_rows = sudoku_rows(60, split="train", seed=0)
    assert {r["reward_model"]["ground_truth"] for r in train_rows} <= set(train)


def test_sudoku_bad_arguments():
    with pytest.raises(ValueError, match="blanks"):
        sudoku_rows(1, blanks=(10, 13))
    with pytest.raises(ValueError, match="split"):
        sudoku_rows(1, split="dev")
    with pytest.raises(ValueError, match="prompt_style"):
        sudoku_rows(1, prompt_style="fancy")


def test_reachable_values_are_certified():
    values = reachable([2, 3, 4])
    assert values[Fraction(5)] and evaluate_text(values[Fraction(5)]) == 5
    assert all(evaluate_text(expr) == value for value, expr in values.items())


def test_countdown_rows_certified_split_and_deterministic():
    rows = countdown_rows(50, split="train", seed=1)
    for row in rows:
        numbers = json.loads(row["extra_info"]["numbers"])
        target = int(row["reward_model"]["ground_truth"])
        assert len(numbers) == 3 and 10 <= target <= 100 and row["extra_info"]["target"] == target
        solution = row["extra_info"]["solution"]
        assert score("countdown", f"<answer>\n{solution}\n</answer>", row).score == 1.0
        assert score("countdown", solution, row, preset="compact").score == 1.0
    assert rows == countdown_rows(50, split="train", seed=1)
    test = countdown_rows(30, split="test", seed=1)
    train_sets = {tuple(sorted(json.loads(r["extra_info"]["numbers"]))) for r in rows}
    test_sets = {tuple(sorted(json.loads(r["extra_info"]["numbers"]))) for r in test}
    assert not train_sets & test_sets
    four = countdown_rows(5, count=4, prompt_style="compact")
    assert all(score("countdown", r["extra_info"]["solution"], r, preset="compact").score == 1.0
               for r in four)
