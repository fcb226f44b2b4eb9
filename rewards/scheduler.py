"""FairScheduler: runs the items of concurrent batches on a fixed number of slots, fairly.

Why: a FIFO thread pool shared by concurrent callers lets one caller's 100-item batch keep a later
caller's single item waiting behind all 100, and a deadline counted from the batch's start then
zeroes answers that never got to run (issue 16, class 6).

What it does:
- `run(fns)` enqueues one batch and blocks until every item has an `Outcome`, in order.
- Items start round-robin across the batches that have items waiting (a new batch joins the back
  of the rotation), so an item waits for at most one item of every other waiting batch per round,
  whatever their sizes. At most `slots` items run at once.
- Each item's budget (`budget_s`) counts from when it starts running, never from its enqueue.
  Time the item spends waiting for a shared resource it reports through its `ItemClock`
  (`wait_began`/`wait_ended`; the isolation pool does, see `rewards.isolation.report_waits`) is
  not charged either, up to `max_uncharged_wait_s` per item.
- An item still running past its budget is reported `timeout` at once. Its thread cannot be killed
  (what it runs must bound itself: the isolation pool and the sandbox kill their children), so its
  slot is handed to a fresh thread and the old one exits when it returns; at most `slots` such
  abandoned threads exist at once, beyond that an overrunning item keeps its slot.
- Queue waiting is bounded: an item gives up with `queue_expired` ("queued for N s behind M
  items") after `max_queue_s` when that is set, and in any case when no item has started for
  `stall_s` while it waited (every slot held by items that cannot be abandoned: a wedged verifier).
- A caller that gives up (its `cancel` event set, or an exception in `run`) drops its queued items;
  its running items finish in the background and their results are discarded.

What it does not do: fairness is per batch, not per client (a client sending many batches gets a
share per batch), and items are not weighted by cost (a slow item holds its slot for its budget).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Poll interval for a caller's cancel event (threading.Event cannot wake a Condition).
_CANCEL_POLL_S = 0.1


@dataclass
class Outcome:
    """How one item ended. kind: done (value or error set), timeout (overran its budget),
    queue_expired (never started: waited too long), cancelled (its caller gave up), closed."""

    kind: str
    value: Any = None
    error: BaseException | None = None
    detail: str = ""
    queue_s: float = 0.0  # seconds between enqueue and start (or the end of its wait)
    run_s: float = 0.0  # seconds charged to the budget: since start, less uncharged waits
    waited_s: float = 0.0  # seconds of reported waits (isolation children) not charged


class ItemClock:
    """One item's timing; the item's own thread reports waits that are not its fault here."""

    def __init__(self, scheduler: FairScheduler, batch: _Batch, fn: Callable) -> None:
        self._scheduler, self.batch, self.fn = scheduler, batch, fn
        self.enqueued = batch.enqueued
        self.started: float | None = None
        self.outcome: Outcome | None = None
        self.slot: _Slot | None = None
        self.overran = False  # reported as timeout while still running
        self._waited, self._wait_since = 0.0, None

    def wait_began(self) -> None:
        with self._scheduler._lock:
            if self._wait_since is None:
                self._wait_since = time.monotonic()

    def wait_ended(self) -> None:
        with self._scheduler._lock:
            if self._wait_since is not None:
                self._waited += time.monotonic() - self._wait_since
                self._wait_since = None

    def waited(self, now: float) -> float:
        """Uncharged wait so far, capped (the cap keeps a wait that never ends bounded)."""
        current = now - self._wait_since if self._wait_since is not None else 0.0
        return min(self._waited + current, self._scheduler.max_uncharged_wait_s)

    def deadline(self, now: float) -> float:
        """When this running item's budget runs out, as of `now` (waits move it later)."""
        return self.started + self._scheduler.budget_s + self.waited(now)


class _Batch:
    def __init__(self, lock: threading.Lock) -> None:
        self.enqueued = time.monotonic()
        self.pending: deque[ItemClock] = deque()  # in enqueue order; items leave from the left
        self.remaining = 0
        self.changed = threading.Condition(lock)


class _Slot:
    """One worker thread; `abandoned` once the item it runs overran and its slot moved on."""

    def __init__(self) -> None:
        self.abandoned = False


class FairScheduler:
    """Round-robin across concurrent `run` calls, `slots` items at once, budgets from item start."""

    def __init__(self, slots: int, *, budget_s: float, name: str = "scheduler",
                 max_queue_s: float | None = None, max_uncharged_wait_s: float = 300.0,
                 stall_s: float | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if max_queue_s is not None and max_queue_s <= 0:
            raise ValueError(f"max_queue_s must be > 0 or None, got {max_queue_s}")
        self.slots, self.budget_s, self.name = slots, budget_s, name
        self.max_queue_s = max_queue_s
        self.max_uncharged_wait_s = max_uncharged_wait_s
        # A slot is freed at the latest budget + uncharged wait after its item started, unless
        # `slots` threads are already abandoned: no start for that long means a wedged verifier.
        self.stall_s = stall_s if stall_s is not None else 2 * (budget_s + max_uncharged_wait_s)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._rotation: deque[_Batch] = deque()  # batches with items waiting, next one first
        self._running: set[ItemClock] = set()  # items holding a slot
        self._abandoned = 0  # threads still running an item that was reported as timeout
        self._queued = 0
        self._last_start = time.monotonic()
        self._closed = False
        self._names = itertools.count()
        self.stats = {"started": 0, "timeouts": 0, "queue_expired": 0, "cancelled": 0, "closed": 0}
        with self._lock:
            for _ in range(slots):
                self._spawn_slot()

    # -- the caller's side ---------------------------------------------------------------------
    def run(self, fns: list[Callable[[ItemClock], Any]], *,
            cancel: threading.Event | None = None) -> list[Outcome]:
        """Run `fn(clock)` for every fn (each in a worker thread); one Outcome per fn, in order."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            batch = _Batch(self._lock)
            items = [ItemClock(self, batch, fn) for fn in fns]
            batch.pending.extend(items)
            batch.remaining = len(items)
            if items:
                self._queued += len(items)
                self._rotation.append(batch)
                self._work.notify(len(items))
            try:
                self._wait(batch, cancel)
            finally:  # also on KeyboardInterrupt: items nobody waits for must not run
                self._drop_pending(batch, "cancelled", "its caller gave up before it started")
                now = time.monotonic()
                for item in items:  # still running: finishes in the background, result dropped
                    if item.outcome is None:
                        self._finish(item, Outcome("cancelled", detail="its caller gave up "
                                                   "while it ran", **self._timing(item, now)))
        return [item.outcome for item in items]

    def _wait(self, batch: _Batch, cancel: threading.Event | None) -> None:
        while batch.remaining:
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                return
            wake = min(self._check_running(now), self._check_queued(batch, now))
            if not batch.remaining:
                return
            if batch.pending:
                # Starts do not wake us (a context switch per item costs more than cheap items
                # do); an item that starts after now cannot overrun before now + budget.
                wake = min(wake, now + self.budget_s)
            timeout = wake - now
            if cancel is not None:
                timeout = min(timeout, _CANCEL_POLL_S)
            batch.changed.wait(max(timeout, 0.001))

    def _check_running(self, now: float) -> float:
        """Report every running item past its budget (any caller does it for all: the item's own
        caller may be gone); the earliest budget end still ahead."""
        wake = math.inf
        for item in list(self._running):
            if item.overran:
                continue
            deadline = item.deadline(now)
            if deadline > now:
                wake = min(wake, deadline)
                continue
            item.overran = True
            self.stats["timeouts"] += 1
            self._finish(item, Outcome("timeout", detail=f"no result within {self.budget_s:g}s "
                                       "of its start", **self._timing(item, now)))
            if self._abandoned < self.slots:  # hand the slot to a fresh thread
                self._running.discard(item)
                item.slot.abandoned = True
                self._abandoned += 1
                self._spawn_slot()
            # else: too many threads are stuck already; this one keeps its slot until it returns
        return wake

    def _check_queued(self, batch: _Batch, now: float) -> float:
        """Expire this batch's waiting items if they waited too long (they were enqueued
        together, so they expire together); when that will be, if not yet."""
        if not batch.pending:
            return math.inf
        limit = max(batch.enqueued, self._last_start) + self.stall_s
        if self.max_queue_s is not None:
            limit = min(limit, batch.enqueued + self.max_queue_s)
        if limit > now:
            return limit
        behind = len(self._running) + self._queued - len(batch.pending)
        self._drop_pending(batch, "queue_expired", f"queued for {now - batch.enqueued:.1f}s "
                           f"behind {behind} items ({len(self._running)} running); never started")
        return math.inf

    def _drop_pending(self, batch: _Batch, kind: str, detail: str) -> None:
        """End every waiting item of `batch` as `kind`; they never start."""
        if not batch.pending:
            return
        now = time.monotonic()
        self.stats[kind] += len(batch.pending)
        self._queued -= len(batch.pending)
        self._rotation.remove(batch)
        while batch.pending:
            item = batch.pending.popleft()
            self._finish(item, Outcome(kind, detail=detail, queue_s=now - item.enqueued))

    def _finish(self, item: ItemClock, outcome: Outcome) -> None:
        if item.outcome is None:
            item.outcome = outcome
            item.batch.remaining -= 1
            if not item.batch.remaining:
                item.batch.changed.notify()

    @staticmethod
    def _timing(item: ItemClock, now: float) -> dict:
        waited = item.waited(now)
        return {"queue_s": item.started - item.enqueued, "run_s": now - item.started - waited,
                "waited_s": waited}

    # -- the worker threads --------------------------------------------------------------------
    def _spawn_slot(self) -> None:
        slot = _Slot()
        threading.Thread(target=self._serve, args=(slot,), daemon=True,
                         name=f"{self.name}-{next(self._names)}").start()

    def _next(self) -> ItemClock | None:
        """The next item round-robin: the first waiting batch gives one, then goes to the back."""
        if not self._rotation:
            return None
        batch = self._rotation.popleft()
        item = batch.pending.popleft()
        if batch.pending:
            self._rotation.append(batch)
        self._queued -= 1
        return item

    def _serve(self, slot: _Slot) -> None:
        while True:
            with self._lock:
                item = None
                while not self._closed and (item := self._next()) is None:
                    self._work.wait()
                if item is None:
                    return
                item.started = self._last_start = time.monotonic()
                item.slot = slot
                self._running.add(item)
                self.stats["started"] += 1
            try:
                outcome = Outcome("done", value=item.fn(item))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, never lost
                outcome = Outcome("done", error=exc)
            with self._lock:
                now = time.monotonic()
                self._running.discard(item)
                if item.outcome is None:
                    timing = self._timing(item, now)
                    outcome.queue_s, outcome.run_s = timing["queue_s"], timing["run_s"]
                    outcome.waited_s = timing["waited_s"]
                    self._finish(item, outcome)
                if slot.abandoned:
                    self._abandoned -= 1
                    return  # a replacement took this slot when the item overran

    # -- state ---------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Items waiting, running and abandoned now, and counts since start."""
        with self._lock:
            return {"queued": self._queued, "running": len(self._running),
                    "abandoned": self._abandoned, "batches_waiting": len(self._rotation),
                    **self.stats}

    def close(self) -> None:
        """Refuse new batches, end every queued item as `closed`, stop idle threads. Running
        items finish in the background; their callers get their results."""
        with self._lock:
            self._closed = True
            for batch in list(self._rotation):
                self._drop_pending(batch, "closed", "the verifier closed before it started")
            self._work.notify_all()
