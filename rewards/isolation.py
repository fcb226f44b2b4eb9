"""A pool of warm child processes for checks that an adversarial answer could stall.

Why: math-verify raises ValueError outside the main thread unless its timeouts are disabled, and
with them disabled `\\boxed{9^{9^{9^{9}}}}` holds the GIL for over a minute. A thread pool whose
`future.result(timeout)` stops waiting is not enough, so every call here runs in a child process
(in that child's main thread) with a wall-clock deadline; a child that overruns is SIGKILLed and
replaced by a fresh one, never merely abandoned.

What it does:
- `IsolationPool(size)` keeps `size` children, fresh interpreters started with subprocess (no
  inherited locks or threads, and the caller's __main__ is never re-run), each pre-importing the modules it will run, so a call costs one pipe
  round trip (well under a millisecond) plus the work itself.
- `call("rewards.mathcheck:verify", *args, deadline_s=...)` runs a function named by
  "module:function" (modules under `rewards.` only) and returns a `CallResult`.
- Children carry an address-space limit and die with the pool's spawner thread
  (PR_SET_PDEATHSIG), and `get_pool()` gives one shared pool per process.
- A call's deadline counts from when its request is sent to a child: waiting for a free child
  (at most `queue_wait_s`, one budget for the whole call) and for a child's start-up (at most
  `startup_timeout_s`) are not charged to it. A caller that keeps its own deadline (VerifierWorker)
  learns about those waits through `report_waits(clock)`, so it does not charge them either.

What it does not do: it is not a security sandbox (children run as the same user with the
same filesystem view); untrusted *code* goes through `rewards.sandbox`, not here. Arguments and
results must be picklable and should be small.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)
_ALLOWED_PREFIX = "rewards."
_DEFAULT_PRELOAD = ("rewards.mathcheck", "rewards.sympycheck", "rewards.tasks.humaneval")
DEFAULT_QUEUE_WAIT_S = 120.0  # longest a call waits for a free child before it is an error
_LOCAL = threading.local()  # .clock: where this thread's waits for a child are reported


@dataclass
class CallResult:
    """Outcome of one isolated call."""

    status: str  # "ok" (value is set), "timeout" (child killed at the deadline) or "error"
    value: Any = None  # the function's return value when status is "ok"
    detail: str = ""  # error text or timeout note
    seconds: float = 0.0  # wall time from sending the request to the answer or the kill


@contextmanager
def report_waits(clock) -> Iterator[None]:
    """While inside, this thread's pool calls report waiting for a child (not the caller's work)
    to `clock.wait_began()` / `clock.wait_ended()` (e.g. a scheduler's ItemClock)."""
    previous = getattr(_LOCAL, "clock", None)
    _LOCAL.clock = clock
    try:
        yield
    finally:
        _LOCAL.clock = previous


@contextmanager
def _waiting() -> Iterator[None]:
    clock = getattr(_LOCAL, "clock", None)
    if clock is not None:
        clock.wait_began()
    try:
        yield
    finally:
        if clock is not None:
            clock.wait_ended()


def _resolve(spec: str, cache: dict) -> Any:
    """Look up "module:function"; only modules of this package may be named."""
    if spec in cache:
        return cache[spec]
    module_name, _, func_name = spec.partition(":")
    if not module_name.startswith(_ALLOWED_PREFIX) or not func_name:
        raise ValueError(f"isolated function {spec!r} is not under {_ALLOWED_PREFIX!r}")
    fn = getattr(importlib.import_module(module_name), func_name)
    cache[spec] = fn
    return fn


def _set_parent_death_signal(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this child when the thread that spawned it exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the pool's explicit kills and daemon=True still apply
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _child_main(conn: Connection, parent_pid: int, preload: tuple, memory_limit: int) -> None:
    """Serve requests in a child: preload, say ready, then run calls until the pipe closes."""
    _set_parent_death_signal(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_limit > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    cache: dict = {}
    for spec in preload:
        if ":" in spec:
            _resolve(spec, cache)
        else:
            importlib.import_module(spec)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            spec, args = conn.recv()
        except (EOFError, OSError):
            return  # the pool closed our pipe or died
        try:
            conn.send(("ok", _resolve(spec, cache)(*args)))
        except BaseException as exc:  # noqa: BLE001 - report MemoryError/RecursionError too
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))


def _child_entry() -> None:
    """`python -c` bootstrap target: argv = [fd, parent_pid, memory_limit, preload...]."""
    fd, parent_pid, memory_limit = (int(a) for a in sys.argv[1:4])
    _child_main(Connection(fd), parent_pid, tuple(sys.argv[4:]), memory_limit)


# The child is a fresh interpreter started with subprocess, not multiprocessing's spawn/forkserver:
# those re-run the parent's __main__ module in the child, which breaks under `python -` and
# re-executes any script without a __main__ guard. sys.path is handed over explicitly.
_BOOTSTRAP = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv.pop(1)); "
    "from rewards.isolation import _child_entry; _child_entry()"
)


class _Child:
    """One child process and the parent's end of its socket."""

    def __init__(self, process: subprocess.Popen, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.ready = False
        self.calls = 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap; safe to call twice."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("isolation child %d did not die after SIGKILL", self.process.pid)
        self.conn.close()


class IsolationPool:
    """Warm child processes that run named functions under a per-call deadline."""

    def __init__(
        self,
        size: int = 2,
        *,
        preload: tuple[str, ...] = _DEFAULT_PRELOAD,
        memory_limit_bytes: int = 4 << 30,
        startup_timeout_s: float = 60.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"IsolationPool size must be >= 1, got {size}")
        self._preload = tuple(preload)
        self._memory_limit = memory_limit_bytes
        self._startup_timeout = startup_timeout_s
        # Children are started from this one long-lived thread so that PR_SET_PDEATHSIG (which
        # follows the spawning *thread*) fires only when the pool itself goes away.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="isolation-spawner")
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._lock = threading.Lock()
        self._size = 0
        self._closed = False
        self.stats = {"calls": 0, "timeouts": 0, "errors": 0, "restarts": 0}
        self.resize(size)

    # -- lifecycle -----------------------------------------------------------------------------
    def _start_child(self) -> _Child:
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        argv = [sys.executable, "-c", _BOOTSTRAP, json.dumps(sys.path), str(fd), str(os.getpid()),
                str(self._memory_limit), *self._preload]
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       pass_fds=(fd,), close_fds=True)
        finally:
            child_sock.close()
        return _Child(process, Connection(parent_sock.detach()))

    def _new_child(self) -> _Child:
        return self._spawner.submit(self._start_child).result()

    def resize(self, size: int) -> None:
        """Grow the pool to `size` children (shrinking is not needed by any caller)."""
        with self._lock:
            missing = size - self._size
            self._size = max(self._size, size)
        for _ in range(max(0, missing)):
            self._idle.put(self._new_child())

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        """Kill every idle child; busy ones are killed when their call returns."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break
        self._spawner.shutdown(wait=False)

    # -- calls ---------------------------------------------------------------------------------
    def _acquire(self, wait_s: float) -> _Child:
        child = self._idle.get(timeout=wait_s)
        if not child.ready:
            # Startup (spawn + imports) is not charged to the caller's deadline.
            try:
                if not child.conn.poll(self._startup_timeout):
                    raise RuntimeError("did not start in time")
                tag, _pid = child.conn.recv()
                if tag != "ready":
                    raise RuntimeError(f"sent {tag!r} instead of ready")
            except (RuntimeError, EOFError, OSError) as exc:
                child.kill()
                raise RuntimeError(f"isolation child failed to start: {exc}") from exc
            child.ready = True
        return child

    def _replace(self, child: _Child) -> None:
        child.kill()
        self._count("restarts")
        if not self._closed:
            self._idle.put(self._new_child())

    def max_wait_s(self, queue_wait_s: float = DEFAULT_QUEUE_WAIT_S) -> float:
        """The longest one call can wait before its deadline starts: the queue wait plus two
        child start-ups (the first child taken may have died idle and be replaced)."""
        return queue_wait_s + 2 * self._startup_timeout

    def call(self, spec: str, *args: Any, deadline_s: float,
             queue_wait_s: float = DEFAULT_QUEUE_WAIT_S) -> CallResult:
        """Run `spec(*args)` in a child; kill and replace the child if it passes `deadline_s`,
        counted from when the request is sent (waiting for a child is not charged to it)."""
        if self._closed:
            raise RuntimeError("IsolationPool is closed")
        self._count("calls")
        with _waiting():  # not the call's work: its deadline starts when the request is sent
            child, failure = self._take_child(queue_wait_s)
        if failure is not None:
            self._count("errors")
            return failure
        start = time.monotonic()
        try:
            child.conn.send((spec, args))
            if not child.conn.poll(max(0.0, deadline_s)):
                self._count("timeouts")
                self._replace(child)
                return CallResult("timeout", detail=f"killed after {deadline_s:g}s",
                                  seconds=time.monotonic() - start)
            tag, payload = child.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            # The child died mid-call (segfault, OOM kill): report and replace it.
            self._count("errors")
            self._replace(child)
            return CallResult("error", detail=f"isolation child died: {type(exc).__name__}",
                              seconds=time.monotonic() - start)
        child.calls += 1
        if self._closed:
            child.kill()
        else:
            self._idle.put(child)
        seconds = time.monotonic() - start
        if tag == "ok":
            return CallResult("ok", value=payload, seconds=seconds)
        self._count("errors")
        return CallResult("error", detail=str(payload), seconds=seconds)

    def _take_child(self, queue_wait_s: float) -> tuple[_Child | None, CallResult | None]:
        """A live, started child, or the error saying why none came within `queue_wait_s`
        (one budget for both tries)."""
        give_up = time.monotonic() + queue_wait_s
        try:
            child = self._acquire(queue_wait_s)
        except queue.Empty:
            return None, CallResult("error", detail=f"no isolation child free within "
                                    f"{queue_wait_s:g}s")
        except RuntimeError as exc:
            self._replace_dead_slot()
            return None, CallResult("error", detail=str(exc))
        if child.alive():
            return child, None
        # Died while idle (killed from outside, OOM killer): not this item's fault, so replace
        # it and take the next child instead of failing the call.
        self._replace(child)
        try:
            return self._acquire(max(0.0, give_up - time.monotonic())), None
        except (queue.Empty, RuntimeError) as exc:
            return None, CallResult("error", detail=f"no live isolation child: {exc}")

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _replace_dead_slot(self) -> None:
        if not self._closed:
            self._idle.put(self._new_child())

    def health(self) -> dict:
        """Pool size, idle children that are alive, and call counters."""
        idle = list(self._idle.queue)  # a snapshot; fine for reporting
        return {
            "size": self._size,
            "idle": len(idle),
            "idle_alive": sum(c.alive() for c in idle),
            "closed": self._closed,
            **self.stats,
        }


_POOL: IsolationPool | None = None
_POOL_PID = -1
_POOL_LOCK = threading.Lock()
DEFAULT_POOL_SIZE = 2  # one child per core on the 2-core machines this was sized on


def get_pool(min_size: int | None = None) -> IsolationPool:
    """The process-wide pool, created on first use (DEFAULT_POOL_SIZE children unless
    `min_size` says otherwise) and grown to at least `min_size` when that is given."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid() or _POOL._closed:
            _POOL = IsolationPool(min_size or DEFAULT_POOL_SIZE)
            _POOL_PID = os.getpid()
            atexit.register(_POOL.close)
        elif min_size is not None and _POOL.size < min_size:
            _POOL.resize(min_size)
        return _POOL


def run_isolated(spec: str, *args: Any, deadline_s: float) -> CallResult:
    """Shorthand for `get_pool().call(...)`."""
    return get_pool().call(spec, *args, deadline_s=deadline_s)
