"""VerifierWorker: scores batches of completions with a concurrency cap and per-item deadlines.

A plain class (no Ray import): `cluster/` wraps it with `ray.remote` and names the actor
(`verifier-1`). Scoring itself is `rewards.score`; this class adds a fair scheduler
(`rewards.scheduler.FairScheduler`: `max_concurrency` items at once, round-robin across
concurrent `score_batch` calls), an isolation pool sized to match (math-verify runs there), a
per-item deadline, and counters for metrics.

Deadlines: an item's budget (`options.deadline_s` + `grace_s`) counts from when it starts
running, never from its batch's start or its enqueue, and time it spends waiting for a free
isolation child is not charged (`rewards.isolation.report_waits`). Queue waiting is bounded:
`max_queue_s` if set, and in any case a stall rule (see the scheduler); an item that never
started comes back `error` with "queued for N s behind M items" and `extra["unscored"] =
"queue"`, so a caller can tell it from a wrong answer. Every result's `extra["queue_s"]` holds
the seconds it waited for a slot.

Threads are enough here because nothing that can stall runs in them: math-verify runs in
killable children (`rewards.isolation`), code in the sandbox, and Countdown/Sudoku checks are
bounded by construction. The per-item deadline is a second line of defence: an item that still
overruns is reported as `timeout` and its thread is left to finish in the background (its slot
goes to a fresh thread).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from rewards import check_preset, score
from rewards.isolation import get_pool, report_waits
from rewards.scheduler import FairScheduler, ItemClock, Outcome
from rewards.tasks import canonical_name
from rewards.types import RewardResult, ScoringOptions

log = logging.getLogger(__name__)

# Slack on top of options.deadline_s before the worker gives up on a running item: code tasks
# add sandbox start-up time, math tasks a child's restart after a kill.
DEADLINE_GRACE_S = 5.0


class VerifierWorker:
    """Scores `{task, completion, item}` requests; results come back in request order."""

    def __init__(self, worker_id: str = "verifier-0", *, preset: str = "bgpo",
                 max_concurrency: int = 2, options: ScoringOptions | None = None,
                 max_queue_s: float | None = None, grace_s: float = DEADLINE_GRACE_S) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.worker_id = worker_id
        self.preset = preset
        self.max_concurrency = max_concurrency
        self.options = options or ScoringOptions()
        self._pool = get_pool(max_concurrency)
        self.budget_s = self.options.deadline_s + grace_s
        self._scheduler = FairScheduler(max_concurrency, budget_s=self.budget_s, name=worker_id,
                                        max_queue_s=max_queue_s,
                                        max_uncharged_wait_s=self._pool.max_wait_s())
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._latency: dict[str, float] = defaultdict(float)
        self._queue_s: dict[str, float] = defaultdict(float)
        self._queue_max = 0.0
        self._waited_s = 0.0
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

    def _score_one(self, task: str, req: dict, clock: ItemClock) -> RewardResult:
        with report_waits(clock):
            return score(task, req.get("completion"), req.get("item"), preset=self.preset,
                         options=self.options)

    def score_batch(self, requests: list[dict], *,
                    cancel: threading.Event | None = None) -> list[RewardResult]:
        """Score every request; ValueError (before scoring anything) on an unknown task/preset.

        `cancel`: set it when the caller gives up (a client that disconnected): its items that
        have not started are dropped, and score_batch returns at once (those items, and the
        ones still running, come back `error` with extra["unscored"] = "cancelled").
        """
        names = self._validate(requests)
        outcomes = self._scheduler.run(
            [lambda clock, n=name, r=req: self._score_one(n, r, clock)
             for name, req in zip(names, requests, strict=True)], cancel=cancel)
        results = [self._result(name, i, o) for i, (name, o) in enumerate(zip(names, outcomes,
                                                                                strict=True))]
        self._record(names, results, outcomes)
        return results

    def _result(self, name: str, index: int, outcome: Outcome) -> RewardResult:
        """The item's RewardResult, with its queue time in extra["queue_s"]."""
        if outcome.kind == "done" and outcome.error is None:
            result = outcome.value
        elif outcome.kind == "done":  # rewards.score never raises on a completion: a bug
            log.error("%r: %s item %d raised", self, name, index, exc_info=outcome.error)
            result = RewardResult(0.0, "error", f"scorer raised {type(outcome.error).__name__}: "
                                  f"{outcome.error}", seconds=outcome.run_s)
        elif outcome.kind == "timeout":
            log.warning("%r: %s item %d overran its deadline; reporting timeout", self, name,
                        index)
            result = RewardResult(0.0, "timeout", outcome.detail, seconds=outcome.run_s)
        else:  # never scored: queue_expired, cancelled, closed
            log.warning("%r: %s item %d not scored: %s", self, name, index, outcome.detail)
            result = RewardResult(0.0, "error", outcome.detail, seconds=outcome.run_s,
                                  extra={"unscored": _UNSCORED[outcome.kind]})
        result.extra["queue_s"] = outcome.queue_s
        if outcome.waited_s:
            result.extra["isolation_wait_s"] = outcome.waited_s
        return result

    def _record(self, names: list[str], results: list[RewardResult],
                outcomes: list[Outcome]) -> None:
        with self._lock:
            self._batches += 1
            for name, result, outcome in zip(names, results, outcomes, strict=True):
                self._counts[name][result.status] += 1
                self._latency[name] += result.seconds
                self._queue_s[name] += outcome.queue_s
                self._queue_max = max(self._queue_max, outcome.queue_s)
                self._waited_s += outcome.waited_s

    def counters(self) -> dict:
        """Counts by task and status, latency and queue-wait sums (seconds) by task, the longest
        queue wait, isolation waits, batches and items, the scheduler's state."""
        with self._lock:
            by_task = {task: dict(statuses) for task, statuses in self._counts.items()}
            return {
                "worker_id": self.worker_id,
                "batches": self._batches,
                "items": sum(sum(s.values()) for s in by_task.values()),
                "by_task": by_task,
                "latency_s_sum": dict(self._latency),
                "queue_s_sum": dict(self._queue_s),
                "queue_s_max": self._queue_max,
                "isolation_wait_s_sum": self._waited_s,
                "scheduler": self._scheduler.snapshot(),
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
        """Stop accepting work; queued items come back unscored (the shared isolation pool
        stays up for other users)."""
        self._scheduler.close()


# extra["unscored"] of an item that never got a verdict (the caller should not train on it).
_UNSCORED = {"queue_expired": "queue", "cancelled": "cancelled", "closed": "closed"}


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
