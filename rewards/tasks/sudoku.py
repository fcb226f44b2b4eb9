"""4x4 Sudoku: fill the puzzle's empty cells ('0') with 1-4.

Presets:
- `bgpo` and `d1`: BGPO's and d1's rule, which is one rule (d1 837888f `diffu-grpo/reward_func.py`
  `sudoku_reward_func`; DARE 83ae8a305a53 `verl/utils/reward_score/math_reward.py`
  `sudoku_reward_func`): the last `re.findall(r"<answer>(.*?)</answer>", DOTALL)` match; its
  `str.isdigit` characters, padded with '0' / cut to 16; the reward is the fraction of the
  puzzle's empty cells that equal the STORED solution. No match or no digits: 0. A puzzle
  without empty cells: 0.
- `lenient`: this project's rule: the last complete `<answer>...</answer>` (`last_tag`), ASCII
  digits, same fraction, but any valid grid that keeps all the givens scores 1.0 (124 of d1's 500
  test puzzles have more than one solution, and the references score the others as partly wrong).
- `compact`: the digits of the whole completion are the answer (no tags), scored as `lenient`.

Rows: `extra_info.puzzle` (16 chars, '0' = empty) and `reward_model.ground_truth` (16 digits).
"""

from __future__ import annotations

from rewards.tasks.answers import last_answer_match, last_tag
from rewards.tasks.base import COMPACT_SEPARATOR, Task
from rewards.types import RewardResult, ScoringOptions

# Cell indices of every row, column and 2x2 box of a 4x4 grid read row-major.
UNITS: tuple[tuple[int, ...], ...] = (
    tuple(tuple(4 * r + c for c in range(4)) for r in range(4))
    + tuple(tuple(4 * r + c for r in range(4)) for c in range(4))
    + tuple(tuple(4 * (br + r) + bc + c for r in range(2) for c in range(2))
            for br in (0, 2) for bc in (0, 2))
)


def is_valid_grid(grid: str) -> bool:
    """True for a complete 16-digit grid whose rows, columns and boxes each hold 1-4 once."""
    if len(grid) != 16 or not set(grid) <= set("1234"):
        return False
    return all({grid[i] for i in unit} == set("1234") for unit in UNITS)


def keeps_givens(grid: str, puzzle: str) -> bool:
    return all(p == "0" or p == g for p, g in zip(puzzle, grid, strict=True))


def read_puzzle(item: dict) -> tuple[str, str]:
    """(puzzle, solution) from a row; ValueError/KeyError/TypeError if malformed."""
    puzzle = str((item.get("extra_info") or {})["puzzle"]).strip()
    solution = str(item["reward_model"]["ground_truth"]).strip()
    if len(puzzle) != 16 or not set(puzzle) <= set("01234"):
        raise ValueError(f"puzzle {puzzle[:20]!r} is not 16 digits 0-4")
    if not is_valid_grid(solution) or not keeps_givens(solution, puzzle):
        raise ValueError(f"solution {solution[:20]!r} does not solve the puzzle")
    return puzzle, solution


def score_grid(answer: str, puzzle: str, solution: str) -> RewardResult:
    """Score answer text (any characters; its digits are the grid)."""
    digits = "".join(ch for ch in answer if "0" <= ch <= "9")
    grid = (digits + "0" * 16)[:16]
    extra = {"grid": grid}
    if is_valid_grid(grid) and keeps_givens(grid, puzzle):
        return RewardResult(1.0, "ok", extra=extra)
    blanks = [i for i, p in enumerate(puzzle) if p == "0"]
    if not blanks:
        return RewardResult(0.0, "wrong", "puzzle has no empty cells and the grid differs", extra=extra)
    right = sum(grid[i] == solution[i] for i in blanks)
    extra["blanks_right"] = right
    return RewardResult(right / len(blanks), "wrong", f"{right}/{len(blanks)} empty cells right",
                        extra=extra)


def reference_score(completion: str, puzzle: str, solution: str) -> RewardResult:
    """BGPO's and d1's Sudoku reward (see the module docstring)."""
    match = last_answer_match(completion)
    digits = "".join(ch for ch in match.strip() if ch.isdigit()) if match is not None else ""
    if not digits:
        return RewardResult(0.0, "no_answer", "no <answer> with digits")
    grid = (digits + "0" * 16)[:16]
    blanks = [i for i, p in enumerate(puzzle) if p == "0"]
    if not blanks:
        return RewardResult(0.0, "wrong", "puzzle has no empty cells", extra={"grid": grid})
    right = sum(grid[i] == solution[i] for i in blanks)
    status = "ok" if right == len(blanks) else "wrong"
    return RewardResult(right / len(blanks), status, f"{right}/{len(blanks)} empty cells as stored",
                        extra={"grid": grid, "blanks_right": right})


class SudokuTask(Task):
    """4x4 Sudoku."""

    name = "sudoku"
    presets = ("bgpo", "d1", "lenient", "compact")

    def compact_prompt(self, item: dict) -> str:
        return f"{(item.get('extra_info') or {})['puzzle']}{COMPACT_SEPARATOR}"

    def compact_target(self, item: dict) -> str:
        extra = item.get("extra_info") or {}
        return str(extra.get("solution") or item["reward_model"]["ground_truth"])

    def score(self, completion: str, item: dict, *, preset: str, options: ScoringOptions) -> RewardResult:
        try:
            puzzle, solution = read_puzzle(item)
        except (KeyError, ValueError, TypeError) as exc:
            return RewardResult(0.0, "error", f"malformed item: {type(exc).__name__}: {exc}")
        if preset in ("bgpo", "d1"):
            return reference_score(completion, puzzle, solution)
        answer = completion if preset == "compact" else last_tag(completion, "answer")
        if answer is None:
            return RewardResult(0.0, "no_answer", "no <answer> tag")
        if preset == "compact" and not any("0" <= ch <= "9" for ch in answer):
            return RewardResult(0.0, "no_answer", "no digits in the completion")
        return score_grid(answer, puzzle, solution)
