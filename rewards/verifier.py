"""VerifierWorker: scores batches of completions with a concurrency cap and per-item deadlines.

A plain class (no Ray import): `cluster/` wraps it with `ray.remote` and names the actor
(`verifier-1`). Scoring itself is `rewards.score`; this class adds a thread pool of
`max_concurrency` threads, an isolation pool sized to match (math-verify runs there), a
per-item wall-clock deadline, and counters for metrics.

Threads are enough here because nothing that can stall runs in them: math-verify runs in
killable children (`rewards.isolation`), code in the sandbox, and Countdown/Sudoku checks are
bounded by construction. The per-item deadline below is a second line of defence: an item that
still overruns is reported as `timeout` and its thread is left to finish in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from rewards import check_preset, score
from rewards.isolation import get_pool
from rewards.tasks import canonical_name
from rewards.types import RewardResult, ScoringOptions

log = logging.getLogger(__name__)

# Slack on top of options.deadline_s before the worker gives up on an item: the isolation pool
# may need to start a replacement child, and code tasks add sandbox start-up time.
DEADLINE_GRACE_S = 5.0


class VerifierWorker:
    """Scores `{task, completion, item}` requests; results come back in request order."""

    def __init__(self, worker_id: str = "verifier-0", *, preset: str = "bgpo",
                 max_concurrency: int = 2, options: ScoringOptions | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.worker_id = worker_id
        self.preset = preset
        self.max_concurrency = max_concurrency
        self.options = options or ScoringOptions()
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix=worker_id)
        self._pool = get_pool(max_concurrency)
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._latency: dict[str, float] = defaultdict(float)
        self._batches = 0

    def __repr__(self) -> str:
        return (f"VerifierWorker({self.worker_id!r}, preset={self.preset!r}, "
                f"max_concurrency={self.max_concurrency})")

    def _validate(self, requests: list[dict]) -> list[str]:
        """Canonical task names; ValueError naming the first bad request (a caller bug)."""
        if not isinstance(requests, list):
            raise ValueError(f"requests must be a list, got {type(requests).__name__}")
        names = []
        for i, req in enumerate(requests):
            if not isinstance(req, dict) or "task" not in req:
                raise ValueError(f"request {i} must be a dict with 'task', 'completion', 'item'")
            try:
                name = canonical_name(req["task"])
                check_preset(name, self.preset)
            except ValueError as exc:
                raise ValueError(f"request {i}: {exc}") from exc
            names.append(name)
        return names

    def _score_one(self, task: str, req: dict) -> RewardResult:
        return score(task, req.get("completion"), req.get("item"), preset=self.preset,
                     options=self.options)

    def score_batch(self, requests: list[dict]) -> list[RewardResult]:
        """Score every request; ValueError (before scoring anything) on an unknown task/preset."""
        names = self._validate(requests)
        start = time.monotonic()
        futures = [self._executor.submit(self._score_one, name, req)
                   for name, req in zip(names, requests, strict=True)]
        budget = self.options.deadline_s + DEADLINE_GRACE_S
        results = []
        for i, (name, future) in enumerate(zip(names, futures, strict=True)):
            # Items queue behind max_concurrency others, so item i may start only after
            # i // max_concurrency earlier rounds; its own budget starts then.
            deadline = start + budget * (i // self.max_concurrency + 1)
            try:
                result = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                log.warning("%r: %s item %d overran its deadline; reporting timeout", self, name, i)
                result = RewardResult(0.0, "timeout", f"no result within {budget:g}s",
                                      seconds=time.monotonic() - start)
            results.append(result)
        self._record(names, results)
        return results

    def _record(self, names: list[str], results: list[RewardResult]) -> None:
        with self._lock:
            self._batches += 1
            for name, result in zip(names, results, strict=True):
                self._counts[name][result.status] += 1
                self._latency[name] += result.seconds

    def counters(self) -> dict:
        """Counts by task and status, latency sums (seconds) by task, batches and items."""
        with self._lock:
            by_task = {task: dict(statuses) for task, statuses in self._counts.items()}
            return {
                "worker_id": self.worker_id,
                "batches": self._batches,
                "items": sum(sum(s.values()) for s in by_task.values()),
                "by_task": by_task,
                "latency_s_sum": dict(self._latency),
                "isolation": self._pool.health(),
            }

    def health(self) -> dict:
        """ok (the isolation pool has live children), sandbox availability, pool state."""
        pool = self._pool.health()
        sandbox = sandbox_status()
        return {
            "worker_id": self.worker_id,
            "ok": not pool["closed"] and (pool["idle"] == 0 or pool["idle_alive"] > 0),
            "preset": self.preset,
            "pool": pool,
            "sandbox": sandbox,
        }

    def close(self) -> None:
        """Stop accepting work (the shared isolation pool stays up for other users)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def sandbox_status() -> dict:
    """Whether the code sandbox module is present and says it works here."""
    try:
        from rewards import sandbox  # noqa: PLC0415 - optional, written separately
    except ImportError as exc:
        return {"available": False, "reason": f"rewards.sandbox not importable: {exc}"}
    probe = getattr(sandbox, "sandbox_available", None) or getattr(sandbox, "available", None)
    if probe is None:
        return {"available": None, "reason": "rewards.sandbox has no availability probe"}
    try:
        result = probe()
    except Exception as exc:  # a failing probe means "not available", and we say why
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    if isinstance(result, tuple):
        return {"available": bool(result[0]), "reason": str(result[1]) if len(result) > 1 else ""}
    return {"available": bool(result), "reason": ""}
