"""Task registry: task name -> Task instance, imported lazily.

The code tasks (humaneval, mbpp) live in modules that need the sandbox; importing them only when
asked keeps scoring math or puzzles free of that dependency. A name that is not registered, or
whose module cannot be imported, raises `UnknownTaskError` (a ValueError) naming it, with the
import error chained.
"""

from __future__ import annotations

import importlib
import threading

from rewards.tasks.base import Task

# name -> "module:Class"
_REGISTRY: dict[str, str] = {
    "gsm8k": "rewards.tasks.math_tasks:GSM8KTask",
    "math": "rewards.tasks.math_tasks:MathTask",
    "countdown": "rewards.tasks.countdown:CountdownTask",
    "sudoku": "rewards.tasks.sudoku:SudokuTask",
    "humaneval": "rewards.tasks.humaneval:HumanEvalTask",
    "mbpp": "rewards.tasks.mbpp:MBPPTask",
}
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Other spellings found in datasets' `data_source` fields.
ALIASES: dict[str, str] = {
    "math500": "math", "math-500": "math", "math_train": "math", "hendrycks_math": "math",
    "openai/gsm8k": "gsm8k",
}

_INSTANCES: dict[str, Task] = {}
_LOCK = threading.Lock()


class UnknownTaskError(ValueError):
    """A task name that is not registered or whose module is not available."""


def canonical_name(name: str) -> str:
    """The registered name for `name` or one of its aliases; UnknownTaskError otherwise."""
    if not isinstance(name, str):
        raise UnknownTaskError(f"task name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return key


def get_task(name: str) -> Task:
    """The (shared, stateless) Task instance for `name`."""
    key = canonical_name(name)
    with _LOCK:
        if key not in _INSTANCES:
            module_name, _, class_name = _REGISTRY[key].partition(":")
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as exc:
                raise UnknownTaskError(
                    f"task {name!r} is unavailable: cannot load {_REGISTRY[key]} ({exc})"
                ) from exc
            _INSTANCES[key] = cls()
        return _INSTANCES[key]


def available_tasks() -> list[str]:
    """Registered task names whose modules import here."""
    names = []
    for name in TASK_NAMES:
        try:
            get_task(name)
        except UnknownTaskError:
            continue
        names.append(name)
    return names


def task_for_row(item: dict) -> str:
    """Guess the task of a dataset row from its `data_source` (d1/BGPO parquet rows have one)."""
    return canonical_name(str(item.get("data_source", "")))
