"""The interface every task implements: prompt formatting, answer extraction and scoring.

Puzzle tasks also have a compact form for the tiny model (`compact_prompt`, `compact_target`):
the bare puzzle and a separator, with the answer itself as the completion.

A task never touches torch and never runs untrusted input in-process without a bound:
anything that could stall (math-verify, sympy, code) goes through a child process or the
sandbox. Dataset rows follow the d1/BGPO parquet layout: keys `prompt` (chat messages),
`reward_model` ({ground_truth, style}) and `extra_info` (task fields).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from rewards.tasks.prompts import prompt_for
from rewards.types import RewardResult, ScoringOptions

COMPACT_SEPARATOR = "="  # ends every compact prompt: the answer follows


class Task(ABC):
    """One task (gsm8k, math, countdown, sudoku, humaneval, mbpp)."""

    name: str = ""
    presets: tuple[str, ...] = ("bgpo",)  # reward presets this task understands

    def format_prompt(self, item: dict, preset: str = "bgpo") -> list[dict]:
        """Chat messages for the policy, asking for the answer format `preset` scores
        (`rewards.tasks.prompts.prompt_for`: the reference's prompt for bgpo and d1)."""
        return prompt_for(self.name, item, preset)

    def compact_prompt(self, item: dict) -> str:
        """The bare puzzle the tiny character-level model is prompted with (preset `compact`)."""
        raise ValueError(f"task {self.name!r} has no compact prompt format; use prompt_style=chat")

    def compact_target(self, item: dict) -> str:
        """The completion a supervised warm start learns for `compact_prompt` (a certified answer)."""
        raise ValueError(f"task {self.name!r} has no compact target")

    @abstractmethod
    def score(self, completion: str, item: dict, *, preset: str, options: ScoringOptions) -> RewardResult:
        """Score one completion against one dataset row. Must not raise on any completion."""
