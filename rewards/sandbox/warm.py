"""Sandboxes started ahead of their run, each waiting (blocked on its stdin) for exactly one job.

Starting a sandbox is most of what a run costs: prlimit and bwrap (namespaces, mounts), the
interpreter, the harness forking its worker. Part of it is waiting rather than computing (the
kernel's RCU grace periods when namespaces are set up and torn down), so a caller that starts each
sandbox only when its run begins leaves a core idle for that long. The pool starts the next
sandbox while the current run goes on, and hands it to the next caller already waiting for its job.

What stays as without the pool: every run gets a sandbox started for it alone (fresh namespaces,
a fresh process tree, its own freshly leased uid and, in root mode, its own memory cgroup, which
the sandbox joined before it started: see memory.py); nothing of a sandbox is reused after its
run.
The job, nonce included, reaches a sandbox only when its run begins, and the harness forks its
worker before reading it (rewards/code_harness.py), as before.

Self-sizing: each `take` starts one replacement, so the pool holds about one sandbox per caller
running at the same time, never more than `limit` (waiting and starting, all keys together). A
sandbox keeps its uid leased (and its cgroup) while it waits. A key is the CPU-seconds limit that prlimit fixed at
start, i.e. the deadline; a full pool makes room by evicting a sandbox of another key.

What it does NOT do: restart sandboxes that died while waiting (they are discarded when found),
or time out sandboxes that wait long (they use no CPU; `close` or interpreter exit ends them).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from rewards.sandbox.supervisor import discard, exited
from rewards.sandbox.uid_pool import UidLease

log = logging.getLogger(__name__)

# start(key) -> (the spawn's Future of its Popen, the uid lease or None); release(lease, clean)
Starter = Callable[[int], "tuple[Future, UidLease | None]"]
Releaser = Callable[["UidLease | None", bool], None]


@dataclass
class Started:
    """A sandbox started for one run: its outer process and the uid it runs as."""

    proc: subprocess.Popen
    lease: UidLease | None
    started_at: float  # time.monotonic() when it was spawned


class WarmPool:
    """Hands out started sandboxes, starting the next one while the current run goes on."""

    def __init__(self, limit: int, start: Starter, release: Releaser) -> None:
        self.limit = limit
        self._start, self._release = start, release
        self._lock = threading.Lock()
        self._ready: dict[int, deque[Started]] = {}
        self._pending = 0
        self._reserved: set[int] = set()  # uids of waiting and still-starting sandboxes
        self._closed = False

    def take(self, key: int, *, refill: bool = True) -> Started:
        """A started sandbox for `key`: a waiting one if alive, else one started now."""
        got, dead = None, []
        with self._lock:
            queue = self._ready.get(key, ())
            while queue and got is None:
                s = queue.popleft()
                self._unreserve(s.lease)
                if exited(s.proc):
                    dead.append(s)
                else:
                    got = s
        for s in dead:  # died while waiting (killed from outside, or bwrap failed)
            log.warning("a pre-started sandbox died before its run; discarded")
            self._discard(s)
        fut = lease = None
        if got is None:  # submitted before the refill, so ours starts first
            fut, lease = self._start(key)
        if refill:
            self._refill(key)
        if got is None:
            try:
                got = Started(fut.result(), lease, time.monotonic())
            except BaseException:
                self._release(lease, False)
                raise
        return got

    def reserved_uids(self) -> set[int]:
        """Uids held by sandboxes that wait for a run or are being started."""
        with self._lock:
            return set(self._reserved)

    def close(self) -> None:
        """Kill every waiting sandbox and free its uid; later refills are dropped."""
        with self._lock:
            self._closed = True
            waiting = [s for q in self._ready.values() for s in q]
            self._ready.clear()
        for s in waiting:
            self._discard(s)

    # ----- internals ------------------------------------------------------------------------
    def _refill(self, key: int) -> None:
        evicted = None
        with self._lock:
            if self._closed or self.limit <= 0:
                return
            if sum(map(len, self._ready.values())) + self._pending >= self.limit:
                # Full: make room only by evicting a sandbox waiting for another deadline.
                other = next((q for k, q in self._ready.items() if k != key and q), None)
                if other is None:
                    return
                evicted = other.popleft()
                self._unreserve(evicted.lease)
            self._pending += 1
        if evicted is not None:
            self._discard(evicted)
        try:
            fut, lease = self._start(key)
        except Exception:  # no free uid, say: the next run starts its own sandbox
            log.exception("could not pre-start a sandbox")
            with self._lock:
                self._pending -= 1
            return
        with self._lock:
            if lease is not None:
                self._reserved.add(lease.uid)
        started_at = time.monotonic()
        fut.add_done_callback(lambda f: self._arrived(key, f, lease, started_at))

    def _arrived(self, key: int, fut: Future, lease: UidLease | None, started_at: float) -> None:
        """Runs on the spawner thread once a refill's spawn finished."""
        error = fut.exception()
        with self._lock:
            self._pending -= 1
            if error is None and not self._closed:
                self._ready.setdefault(key, deque()).append(Started(fut.result(), lease,
                                                                    started_at))
                return
            self._unreserve(lease)
        if error is not None:
            log.error("pre-starting a sandbox failed: %s: %s", type(error).__name__, error)
            self._release(lease, False)
        else:
            self._discard(Started(fut.result(), lease, started_at))

    def _discard(self, s: Started) -> None:
        discard(s.proc)
        self._release(s.lease, False)  # killed, not exited by itself: the uid is swept

    def _unreserve(self, lease: UidLease | None) -> None:
        if lease is not None:
            self._reserved.discard(lease.uid)
