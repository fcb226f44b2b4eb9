"""Procedural 4x4 Sudoku and Countdown puzzles with certified answers, as dataset rows.

Rows have the layout of the d1/BGPO parquet files (`data_source`, `prompt` chat messages,
`reward_model {ground_truth, style}`, `extra_info`), so `rewards.score` scores them unchanged.

Sudoku: all 288 valid 4x4 grids are enumerated; a puzzle is made by blanking cells in a seeded
random order, keeping a blank only while exactly one grid stays consistent with the givens, so
every puzzle has a unique solution. Train and test use disjoint solution grids (split BY GRID).

Countdown: every value reachable from the numbers (each used exactly once, + - * / with exact
Fractions, all tree shapes) is enumerated with one expression per value; the target is drawn
among the reachable integers in range, and the stored solution is re-checked with the same
evaluator the reward uses. Train and test use disjoint number multisets.

Everything is deterministic given the seed. Not done here: difficulty grading beyond the
number of blanks, and puzzles larger than 4x4.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import random
from fractions import Fraction

from rewards.arith import evaluate_text
from rewards.tasks.sudoku import UNITS, is_valid_grid

SUDOKU_PROMPT = (
    "Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character "
    "string reading left-to-right, top-to-bottom, where '0' represents empty cells.\n\n"
    "Rules:\n- Fill empty cells with digits 1-4\n- Each row must contain digits 1-4 exactly once\n"
    "- Each column must contain digits 1-4 exactly once\n"
    "- Each 2x2 box must contain digits 1-4 exactly once\n\n"
    "Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, "
    "representing your final solved grid.\n\nRespond in this exact format:\n<reasoning>\n"
    "Your step-by-step solving process\n</reasoning>\n<answer>\n"
    "[16-character solution string with no spaces or separators]\n</answer>\n\n\n"
    "Solve the following Sudoku puzzle: {puzzle}\n"
)
COUNTDOWN_PROMPT = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
    "Using only the numbers {numbers}, create an arithmetic expression that evaluates to exactly "
    "{target}. You must use all numbers from the list, and each number must be used exactly once. "
    "You may use the operations +, -, *, and / as needed. After reasoning, provide only your final "
    "expression inside <answer></answer> tags without including an equals sign or the target "
    "number. For example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: "
    "<answer>\n2*4-3\n</answer>"
)
PROMPT_STYLES = ("d1", "compact")  # d1: the parquet files' text; compact: bare puzzle for tiny models


# -- Sudoku ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """Every valid 4x4 Sudoku grid (288 of them), in lexicographic order."""
    grids: list[str] = []
    cells = [0] * 16

    def fill(i: int) -> None:
        if i == 16:
            grids.append("".join(map(str, cells)))
            return
        for digit in range(1, 5):
            if all(digit != cells[j] for unit in UNITS if i in unit for j in unit if j < i):
                cells[i] = digit
                fill(i + 1)
        cells[i] = 0

    fill(0)
    assert len(grids) == 288 and all(map(is_valid_grid, grids))
    return tuple(grids)


def solutions(puzzle: str) -> list[str]:
    """All grids consistent with the givens of `puzzle` ('0' = empty)."""
    givens = [(i, ch) for i, ch in enumerate(puzzle) if ch != "0"]
    return [g for g in all_grids() if all(g[i] == ch for i, ch in givens)]


def split_grids(seed: int, test_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """(train_grids, test_grids): a seeded partition of the 288 grids."""
    grids = list(all_grids())
    random.Random(f"sudoku-split-{seed}").shuffle(grids)
    n_test = round(len(grids) * test_fraction)
    return sorted(grids[n_test:]), sorted(grids[:n_test])


def make_puzzle(grid: str, rng: random.Random, blanks: int, tries: int = 50) -> str | None:
    """A puzzle with exactly `blanks` empty cells whose only solution is `grid`, or None."""
    if not 0 <= blanks <= 16:
        raise ValueError(f"blanks must be in 0..16, got {blanks}")
    for _ in range(tries):
        cells = list(grid)
        removed = 0
        for i in rng.sample(range(16), 16):
            if removed == blanks:
                break
            cells[i] = "0"
            if len(solutions("".join(cells))) == 1:
                removed += 1
            else:
                cells[i] = grid[i]  # blanking this cell would admit a second solution
        if removed == blanks:
            return "".join(cells)
    return None


def sudoku_rows(n: int, *, split: str = "train", seed: int = 0, blanks: tuple[int, int] = (6, 10),
                test_fraction: float = 0.2, prompt_style: str = "d1") -> list[dict]:
    """`n` unique-solution puzzles from this split's grids, blanks drawn from `blanks` (inclusive).

    4x4 puzzles with a unique solution have at most 12 blanks; a range above that raises.
    """
    low, high = blanks
    if not 0 <= low <= high <= 12:
        raise ValueError(f"blanks range {blanks} must lie within 0..12 for unique 4x4 puzzles")
    _check_style(prompt_style)
    train, test = split_grids(seed, test_fraction)
    grids = _split_pick(split, train, test)
    rng = random.Random(f"sudoku-{split}-{seed}")
    rows: list[dict] = []
    while len(rows) < n:
        grid = rng.choice(grids)
        puzzle = make_puzzle(grid, rng, rng.randint(low, high))
        if puzzle is None:
            continue  # rare for <= 12 blanks; draw another grid
        text = puzzle if prompt_style == "compact" else SUDOKU_PROMPT.format(puzzle=puzzle)
        rows.append(_row("sudoku", text, grid, {"index": len(rows), "split": split,
                                                "task": "sudoku", "puzzle": puzzle}))
    return rows


# -- Countdown ---------------------------------------------------------------------------------
def reachable(numbers: list[int] | tuple[int, ...]) -> dict[Fraction, str]:
    """Every value of an expression using each number exactly once -> one such expression."""
    return dict(_reachable(tuple(numbers)))


@functools.lru_cache(maxsize=4096)
def _reachable(numbers: tuple[int, ...]) -> tuple[tuple[Fraction, str], ...]:
    full = (1 << len(numbers)) - 1
    table: dict[int, dict[Fraction, str]] = {
        1 << i: {Fraction(x): str(x)} for i, x in enumerate(numbers)}
    # Masks in increasing popcount, so both halves of a split are complete when combined.
    for mask in sorted(range(1, full + 1), key=lambda m: bin(m).count("1")):
        if mask in table:
            continue
        values: dict[Fraction, str] = {}
        sub = (mask - 1) & mask
        while sub:
            for a, ea in table[sub].items():
                for b, eb in table[mask ^ sub].items():
                    values.setdefault(a + b, f"({ea}+{eb})")
                    values.setdefault(a - b, f"({ea}-{eb})")
                    values.setdefault(a * b, f"({ea}*{eb})")
                    if b != 0:
                        values.setdefault(a / b, f"({ea}/{eb})")
            sub = (sub - 1) & mask
        table[mask] = values
    return tuple((value, _strip_outer(expr)) for value, expr in table[full].items())


def _strip_outer(expr: str) -> str:
    return expr[1:-1] if expr.startswith("(") and expr.endswith(")") else expr


def countdown_puzzle(rng: random.Random, *, count: int = 3, number_range: tuple[int, int] = (1, 99),
                     target_range: tuple[int, int] = (10, 100)) -> tuple[list[int], int, str]:
    """(numbers, target, solution) with a target reachable from all the numbers."""
    while True:
        numbers = [rng.randint(*number_range) for _ in range(count)]
        values = reachable(numbers)
        targets = sorted(int(v) for v in values
                         if v.denominator == 1 and target_range[0] <= v <= target_range[1])
        if not targets:
            continue
        target = rng.choice(targets)
        solution = values[Fraction(target)]
        if evaluate_text(solution) != target:  # certify with the reward's own evaluator
            raise AssertionError(f"generator bug: {solution} != {target}")
        return numbers, target, solution


def countdown_split_of(numbers: list[int], seed: int, test_fraction: float) -> str:
    """"test" or "train" from a hash of the sorted multiset, so a multiset is never in both."""
    key = f"countdown-{seed}-{sorted(numbers)}".encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def countdown_rows(n: int, *, split: str = "train", seed: int = 0, count: int = 3,
                   number_range: tuple[int, int] = (1, 99), target_range: tuple[int, int] = (10, 100),
                   test_fraction: float = 0.1, prompt_style: str = "d1") -> list[dict]:
    """`n` distinct Countdown puzzles of this split with certified solutions."""
    _check_style(prompt_style)
    _split_pick(split, [1], [1])
    rng = random.Random(f"countdown-{split}-{seed}")
    rows: list[dict] = []
    seen: set[tuple] = set()
    for _ in itertools.count():
        if len(rows) == n:
            break
        numbers, target, solution = countdown_puzzle(rng, count=count, number_range=number_range,
                                                     target_range=target_range)
        key = (tuple(sorted(numbers)), target)
        if key in seen or countdown_split_of(numbers, seed, test_fraction) != split:
            continue
        seen.add(key)
        shown = json.dumps(numbers)  # "[30, 100, 93]", the text d1's files store
        text = (f"{' '.join(map(str, numbers))} -> {target}" if prompt_style == "compact"
                else COUNTDOWN_PROMPT.format(numbers=shown, target=target))
        rows.append(_row("countdown", text, str(target), {
            "index": len(rows), "split": split, "task": "countdown", "numbers": shown,
            "target": target, "solution": solution}))
    return rows


# -- shared ------------------------------------------------------------------------------------
def _row(source: str, text: str, ground_truth: str, extra_info: dict) -> dict:
    return {"data_source": source, "prompt": [{"role": "user", "content": text}],
            "reward_model": {"ground_truth": ground_truth, "style": "rule"},
            "extra_info": extra_info}


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt_style {style!r}; known: {', '.join(PROMPT_STYLES)}")


def _split_pick(split: str, train: list, test: list) -> list:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return train if split == "train" else test
