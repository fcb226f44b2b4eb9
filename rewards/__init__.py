"""Rewards: task scoring, the isolation pool, VerifierWorker and the verification service.

`score(task, completion, item)` is the one entry point every caller uses; it never raises on a
completion (wrong type, megabytes, NUL bytes): failures come back as a RewardResult status.
An unknown task or preset is a caller bug and raises ValueError naming it.

The length cap is applied here, once, before any task reads the completion:
`_score_checked` cuts it to `options.max_completion_chars` (the head is kept, as a length-capped
generation would have produced it). All parsing after the cut is linear in its length; the
sympy and math-verify checks run in `rewards.isolation` children under the deadline.
"""

from __future__ import annotations

import logging
import time

from rewards.tasks import TASK_NAMES, UnknownTaskError, get_task
from rewards.types import STATUSES, RewardResult, ScoringOptions

__all__ = ["PRESETS", "STATUSES", "TASK_NAMES", "RewardResult", "ScoringOptions",
           "UnknownTaskError", "check_preset", "get_task", "score"]

PRESETS: tuple[str, ...] = ("bgpo", "d1", "lenient", "compact")
_DEFAULT_OPTIONS = ScoringOptions()
log = logging.getLogger(__name__)


def check_preset(task: str, preset: str) -> None:
    """ValueError unless `task` exists and understands `preset`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown reward preset {preset!r}; known presets: {', '.join(PRESETS)}")
    presets = get_task(task).presets
    if preset not in presets:
        raise ValueError(f"task {task!r} has no preset {preset!r}; it has {', '.join(presets)}")


def score(task: str, completion: str, item: dict, *, preset: str = "bgpo",
          options: ScoringOptions | None = None) -> RewardResult:
    """Score one completion of `task` against dataset row `item`."""
    check_preset(task, preset)
    options = options or _DEFAULT_OPTIONS
    start = time.monotonic()
    result = _score_checked(get_task(task), completion, item, preset, options)
    result.seconds = time.monotonic() - start
    return result


def _encodable(text: str) -> str:
    """`text` with lone surrogates replaced by '?': they cannot be encoded as UTF-8, and a
    result that echoes them (extra["answer"]) would break every JSON writer downstream."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _score_checked(task_obj, completion, item, preset: str, options: ScoringOptions) -> RewardResult:
    if not isinstance(completion, str):
        return RewardResult(0.0, "error", f"completion is {type(completion).__name__}, not str")
    if not isinstance(item, dict):
        return RewardResult(0.0, "error", f"item is {type(item).__name__}, not dict")
    truncated = len(completion) > options.max_completion_chars
    if truncated:
        # Before anything else reads it (the surrogate check below included): every task sees
        # at most max_completion_chars characters.
        completion = completion[: options.max_completion_chars]
    completion = _encodable(completion)
    try:
        result = task_obj.score(completion, item, preset=preset, options=options)
    except Exception as exc:  # a task bug must not take down a batch; it is logged, not hidden
        log.exception("task %s raised while scoring", task_obj.name)
        return RewardResult(0.0, "error", f"scorer raised {type(exc).__name__}: {exc}")
    if truncated:
        result.extra["truncated_to"] = options.max_completion_chars
    return result
