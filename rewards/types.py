"""Data contract of the rewards package: what scoring one completion returns.

Scoring never raises on a completion; every failure is a status with a score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Every status a RewardResult may carry.
#   ok                  the answer is correct (score is the task's full reward)
#   wrong               an answer was found and is wrong or partly right (score may be > 0,
#                       e.g. Countdown's 0.1 or Sudoku's fraction of blanks right)
#   no_answer           no answer could be extracted (no \boxed{}, no <answer> tag, no code)
#   timeout             checking the answer ran past its deadline and was killed
#   error               the checker failed on this input (malformed item, parser crash)
#   sandbox_unavailable code could not be run because no sandbox works here (fail closed)
STATUSES = ("ok", "wrong", "no_answer", "timeout", "error", "sandbox_unavailable")


@dataclass
class RewardResult:
    """The reward of one completion."""

    score: float  # the reward used for training, in [0, 1] for the bgpo preset
    status: str  # one of STATUSES
    detail: str = ""  # short human-readable reason (first failing test, parse error), capped
    seconds: float = 0.0  # wall time spent scoring this completion
    extra: dict = field(default_factory=dict)  # task-specific facts (tests passed, answer found)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown reward status {self.status!r}; expected one of {STATUSES}")
        self.detail = self.detail[:500]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScoringOptions:
    """Knobs that change how (not what) a completion is checked."""

    deadline_s: float = 10.0  # wall-clock limit for checking one completion (parsers, sandboxed code)
    allow_unsandboxed: bool = False  # run code without the sandbox when none works (explicit opt-in)
    # Longer completions are cut to this in `rewards.score` before any task parses them. Answer
    # parsing is linear, so this bounds its work; code is parsed in an isolation child under the
    # deadline (CPython's parser is not linear on every input: rewards/tasks/code_common.py).
    max_completion_chars: int = 200_000
