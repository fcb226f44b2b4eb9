"""Run one child process with a wall-clock deadline and capped output, and always kill it.

What it guarantees: `run_process` returns by the deadline (plus the time to SIGKILL and reap), whatever
the child does: it never blocks on a full stdin pipe, never waits for EOF that a grandchild holding
the pipes would withhold, and keeps at most `stdout_cap`/`stderr_cap` bytes. At the end it SIGKILLs
the child's whole process group. `run_process` is `spawn` then `supervise`; a caller may spawn
ahead of time (`spawn_async`: the child starts and blocks reading its stdin) and supervise later,
the deadline counting from `supervise`, or, given a `started` marker, from when the child writes
it (the harness does just before it reads its job: start-up of a sandbox that was not started
ahead of time is then not charged to the run's deadline). `supervise` also polls an optional `watch` (the run's
memory cgroup, say) and kills the child as soon as it says so.

Two subtleties:
- Children are spawned from ONE long-lived thread. bwrap's --die-with-parent uses the parent-death
  signal, which fires when the *thread* that forked the child exits; spawning from a worker thread
  that later ends (a thread pool shrinking, asyncio.to_thread) would kill or orphan sandboxes.
- Exit is detected with waitid(WNOWAIT), which leaves the child unreaped until we have signalled
  its process group: killpg on a reaped (and possibly reused) pid could hit an unrelated group.

What it does NOT do: kill processes that left the process group (setsid daemons). In the sandbox
the pid namespace and the uid sweep handle those; in unsandboxed mode they can survive.
"""

from __future__ import annotations

import os
import queue
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

_EXIT_GRACE_S = 0.2  # after the child exits, how long to wait for pipe EOF from its descendants
_STDERR_DRAIN_FACTOR = 16  # stderr beyond stderr_cap * this is treated as an output flood
_WATCH_EVERY_S = 0.02  # how often `watch` is polled (a cgroup file read: about 20 us)
START_TIMEOUT_S = 30.0  # longest wait for a child's `started` marker (start-up under heavy load)


@dataclass
class ProcessOutcome:
    """What happened to one supervised child."""

    returncode: int | None  # exit status (negative: killed by that signal); None if never known
    stdout: bytes  # at most stdout_cap bytes
    stderr: bytes  # at most stderr_cap bytes
    timed_out: bool  # the deadline passed and we killed it
    overflow: bool  # it wrote more than the caps allow and we killed it
    seconds: float  # wall time from spawn to reaped


class _Spawner:
    """A daemon thread that owns every Popen call (see the module docstring for why)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="sandbox-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            argv, kwargs, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as e:  # handed to the caller, who raises it
                fut.set_exception(e)

    def submit(self, argv: list[str], **kwargs) -> Future:
        fut: Future = Future()
        self._jobs.put((argv, kwargs, fut))
        return fut


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _get_spawner() -> _Spawner:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
        return _spawner


def _popen_kwargs(user: int | None, env: dict | None, preexec: Callable | None) -> dict:
    kwargs: dict = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        start_new_session=True, close_fds=True, cwd="/",
                        env=env if env is not None else {"PATH": "/usr/bin:/bin"})
    if user is not None:
        kwargs.update(user=user, group=user, extra_groups=[])
    if preexec is not None:  # runs in the child after setsid (and after user=, if given)
        kwargs.update(preexec_fn=preexec)
    return kwargs


def spawn_async(argv: list[str], *, user: int | None = None, env: dict | None = None,
                preexec: Callable | None = None) -> Future:
    """Start argv (as `user` if given, root only) on the spawner thread; a Future of its Popen.

    preexec: a Popen preexec_fn (memory.confine: join the cgroup, namespaces, drop to the uid).
    """
    return _get_spawner().submit(argv, **_popen_kwargs(user, env, preexec))


def spawn(argv: list[str], *, user: int | None = None, env: dict | None = None,
          preexec: Callable | None = None) -> subprocess.Popen:
    """spawn_async, waited for: the started child, its three pipes open."""
    return spawn_async(argv, user=user, env=env, preexec=preexec).result()


def _exited(pid: int) -> bool:
    """True if the child has exited, without reaping it (so its pid cannot be reused yet)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def exited(proc: subprocess.Popen) -> bool:
    """True if the child has exited (it is not reaped, so its pid cannot be reused yet)."""
    return _exited(proc.pid)


def run_process(argv: list[str], stdin: bytes, *, deadline_s: float, user: int | None = None,
                env: dict | None = None, stdout_cap: int = 1 << 20,
                stderr_cap: int = 64 << 10, started: bytes | None = None) -> ProcessOutcome:
    """Run argv (as `user` if given, root only) feeding `stdin`; see the module docstring."""
    start = time.monotonic()
    proc = spawn(argv, user=user, env=env)
    return supervise(proc, stdin, deadline_s=deadline_s, stdout_cap=stdout_cap,
                     stderr_cap=stderr_cap, start=None if started else start, started=started)


def supervise(proc: subprocess.Popen, stdin: bytes, *, deadline_s: float,
              stdout_cap: int = 1 << 20, stderr_cap: int = 64 << 10,
              start: float | None = None,
              watch: Callable[[], bool] | None = None,
              started: bytes | None = None) -> ProcessOutcome:
    """Feed `stdin` to a spawned child and collect its output until it exits or the deadline
    (counted from `start`, default now) passes; then kill its process group and reap it.

    watch: polled every _WATCH_EVERY_S while the child runs; True stops the run at once (the
    caller knows why: the outcome is neither timed out nor overflowed).
    started: a line the child writes to stdout when it is ready for its input; the deadline then
    counts from when it arrives (waiting at most START_TIMEOUT_S, not charged to the deadline).
    A child that exits or stays silent before it is returned unfed, with what it wrote to stderr.
    """
    try:
        if started is not None and not _await_marker(proc, started):
            proc.stdin.close()
            stderr = _drain(proc.stderr, stderr_cap)
            if not exited(proc):
                stderr += b"\nstarted, but did not write its start marker (within "
                stderr += f"{START_TIMEOUT_S:g}s)".encode()
            return ProcessOutcome(None, b"", stderr, False, False, 0.0)
        start = time.monotonic() if start is None else start
        out, err, timed_out, overflow = _pump(proc, stdin, start + deadline_s, stdout_cap,
                                              stderr_cap, watch)
    finally:
        discard(proc)
    return ProcessOutcome(proc.returncode, out, err, timed_out, overflow,
                          time.monotonic() - start)


def _await_marker(proc: subprocess.Popen, marker: bytes) -> bool:
    """Read stdout up to and including `marker` (a line the child writes before it reads its
    input, so nothing else comes first); False if the child exits or stays silent first."""
    fd, seen = proc.stdout.fileno(), b""
    end = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(seen) < len(marker):
            left = end - time.monotonic()
            if left <= 0 or not sel.select(min(left, 0.5)):
                if left <= 0 or _exited(proc.pid):
                    return False
                continue
            chunk = os.read(fd, len(marker) - len(seen))  # never past the marker
            if not chunk or not marker.startswith(seen + chunk):
                return False
            seen += chunk
    return True


def _drain(pipe, cap: int) -> bytes:
    """What a child that failed to start wrote to stderr (nonblocking, at most `cap` bytes)."""
    os.set_blocking(pipe.fileno(), False)
    try:
        return os.read(pipe.fileno(), cap)
    except (BlockingIOError, OSError):
        return b""


def discard(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group, reap the child and close its pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # safe: the child is not reaped yet
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            pipe.close()
        except OSError:
            pass


def _pump(proc: subprocess.Popen, data: bytes, end: float, stdout_cap: int,
          stderr_cap: int, watch: Callable[[], bool] | None) -> tuple[bytes, bytes, bool, bool]:
    """Feed stdin and drain stdout/stderr until EOF, the deadline, an output flood, or `watch`."""
    sel = selectors.DefaultSelector()
    out, err = bytearray(), bytearray()
    err_total = 0
    view, offset = memoryview(data), 0
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        os.set_blocking(pipe.fileno(), False)
    if data:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    exit_seen: float | None = None
    next_watch = time.monotonic() + _WATCH_EVERY_S
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= end:
                return bytes(out), bytes(err), True, False
            if watch is not None and now >= next_watch:
                if watch():
                    return bytes(out), bytes(err), False, False
                next_watch = now + _WATCH_EVERY_S
            if exit_seen is None and _exited(proc.pid):
                exit_seen = now
            if exit_seen is not None and now - exit_seen > _EXIT_GRACE_S:
                break  # a descendant outside our reach holds the pipes; stop waiting for it
            wait = min(end - now, 0.05 if watch is None else _WATCH_EVERY_S)
            for key, _ in sel.select(wait):
                pipe = key.fileobj
                if pipe is proc.stdin:
                    try:
                        offset += os.write(pipe.fileno(), view[offset:offset + (1 << 16)])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        offset = len(data)
                    if offset >= len(data):
                        sel.unregister(pipe)
                        pipe.close()
                    continue
                try:
                    chunk = os.read(pipe.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(pipe)
                    continue
                if pipe is proc.stdout:
                    out += chunk
                    if len(out) > stdout_cap:
                        return bytes(out[:stdout_cap]), bytes(err), False, True
                else:
                    err_total += len(chunk)
                    err += chunk[: max(0, stderr_cap - len(err))]
                    if err_total > stderr_cap * _STDERR_DRAIN_FACTOR:
                        return bytes(out), bytes(err), False, True
    finally:
        sel.close()
    return bytes(out), bytes(err), False, False
