"""4x4 Sudoku scoring, including d1's single-stored-solution bug."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards import score
from rewards.generators import solutions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"
ROWS = [json.loads(x) for x in (FIXTURES / "sudoku.jsonl").read_text().splitlines()]


def tagged(grid: str) -> str:
    return f"<reasoning>\nsolve\n</reasoning>\n<answer>\n{grid}\n</answer>"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["extra_info"]["puzzle"])
def test_real_rows_ground_truth_scores_one(row):
    gold = row["reward_model"]["ground_truth"]
    for preset in ("bgpo", "d1", "lenient"):
        assert (score("sudoku", tagged(gold), row, preset=preset).score) == 1.0
    assert score("sudoku", gold, row, preset="compact").status == "ok"


def test_any_valid_grid_keeping_givens_scores_one_in_lenient_only():
    """d1 and BGPO compare with one stored solution; these test puzzles have several valid ones."""
    multi = [r for r in ROWS if len(solutions(r["extra_info"]["puzzle"])) > 1]
    assert multi, "fixture must hold a multi-solution puzzle"
    for row in multi:
        gold = row["reward_model"]["ground_truth"]
        other = next(g for g in solutions(row["extra_info"]["puzzle"]) if g != gold)
        result = score("sudoku", tagged(other), row, preset="lenient")
        assert (result.score, result.status) == (1.0, "ok")
        for preset in ("bgpo", "d1"):
            reference = score("sudoku", tagged(other), row, preset=preset)
            assert reference.status == "wrong" and reference.score < 1.0


def test_partial_credit_is_fraction_of_blanks():
    row = ROWS[0]
    puzzle, gold = row["extra_info"]["puzzle"], row["reward_model"]["ground_truth"]
    blanks = [i for i, p in enumerate(puzzle) if p == "0"]
    wrong_one = list(gold)
    wrong_one[blanks[0]] = "9"
    result = score("sudoku", tagged("".join(wrong_one)), row)
    assert result.status == "wrong"
    assert result.score == pytest.approx((len(blanks) - 1) / len(blanks))
    assert score("sudoku", tagged(puzzle), row).score == 0.0


def test_reference_presets_read_the_last_findall_match_and_unicode_digits():
    row = ROWS[0]
    gold = row["reward_model"]["ground_truth"]
    nested = f"<answer>draft <answer>{gold}</answer>"  # one match, opened at the first tag
    assert score("sudoku", nested, row, preset="bgpo").score == 1.0
    # str.isdigit keeps a superscript two, which shifts every later cell.
    shifted = score("sudoku", f"<answer>²{gold}</answer>", row, preset="d1")
    assert shifted.score < 1.0
    assert score("sudoku", f"<answer>²{gold}</answer>", row, preset="lenient").score == 1.0


def test_digits_kept_padded_and_truncated():
    row = ROWS[0]
    gold = row["reward_model"]["ground_truth"]
    spaced = " ".join(gold[i:i + 4] for i in range(0, 16, 4))
    assert score("sudoku", tagged(spaced), row).score == 1.0
    assert score("sudoku", tagged(gold + "1234"), row).score == 1.0  # truncated to 16
    short = score("sudoku", tagged(gold[:8]), row)  # padded with '0'
    assert short.status == "wrong" and 0.0 <= short.score < 1.0


def test_no_answer_and_malformed():
    row = ROWS[0]
    gold = row["reward_model"]["ground_truth"]
    assert score("sudoku", gold, row).status == "no_answer"  # bgpo needs the tag
    assert score("sudoku", "no digits", row, preset="compact").status == "no_answer"
    bad = {"extra_info": {"puzzle": "12"}, "reward_model": {"ground_truth": gold}}
    assert score("sudoku", tagged(gold), bad).status == "error"


def test_grid_that_changes_a_given_is_not_full_marks():
    row = ROWS[0]
    puzzle = row["extra_info"]["puzzle"]
    others = [g for g in solutions("0" * 16) if any(p != "0" and p != c for p, c in zip(
        puzzle, g, strict=True))]
    assert score("sudoku", tagged(others[0]), row).score < 1.0
