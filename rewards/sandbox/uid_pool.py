"""A pool of unprivileged uids, one per sandboxed run, and the sweep that kills a uid's processes.

Why a fresh uid per run (rewards.md section 3): RLIMIT_NPROC is ignored for root and counts every
process of a uid, so the sandbox must run as a non-root uid that nothing else uses; then "kill all
processes of this uid" is an exact after-run cleanup, and leftovers of one run can never eat the
next run's process budget.

Leases are `flock`s on files in a root-only directory, so several verifier processes on one host
never share a uid. The sweep reads /proc/<pid>/status (the real/effective/saved uids), not the
owner of /proc/<pid>: a process that makes itself non-dumpable shows up as owned by root.

Does NOT protect against: another program on the host using the same uid range (pick a free one
with SandboxConfig.uid_base), or a host where /proc is hidden (hidepid) from root.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import tempfile
import threading
import time

log = logging.getLogger(__name__)


def pids_of_uid(uid: int, *, zombies: bool = True) -> list[int]:
    """Pids whose real, effective or saved uid is `uid` (zombies only if `zombies`)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                head = f.read(1024)
        except OSError:  # the process went away while we listed /proc
            continue
        for line in head.split(b"\n"):
            if line.startswith(b"State:") and not zombies and b"Z" in line[6:9]:
                break
            if line.startswith(b"Uid:"):
                if str(uid).encode() in line.split()[1:4]:
                    found.append(int(name))
                break
    return found


def sweep_uid(uid: int, *, timeout_s: float = 2.0) -> tuple[int, bool]:
    """SIGKILL every live process of `uid` until none is left: (signals sent, clean?).

    Zombies are dead already and cannot be killed; they wait for their parent (or, once orphaned,
    the host's init) to reap them and are not counted.
    """
    sent = 0
    end = time.monotonic() + timeout_s
    while True:
        pids = pids_of_uid(uid, zombies=False)
        if not pids:
            return sent, True
        if time.monotonic() > end:
            return sent, False
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                sent += 1
            except ProcessLookupError:
                pass
        time.sleep(0.002)  # let the kernel deliver and the reapers reap


class UidLease:
    """One leased uid; release() (or the pool) gives it back."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd = fd
        self.cgroup = None  # the run's memory cgroup (memory.RunCgroup), set by the runner

    def close(self, *, clean: bool) -> None:
        if self._fd >= 0:
            if clean:
                os.ftruncate(self._fd, 0)  # an empty lock file: the uid has no process left
            os.close(self._fd)  # closing the fd drops the flock
            self._fd = -1


class UidPool:
    """Hands out uids in [base, base + count), round-robin, one run at a time per uid.

    A lease marks its lock file in use (one byte) and a clean release empties it again, so a
    non-empty lock file that can be locked was left by a holder that died mid-run: that uid is
    swept before it is handed out. A uid released clean needs no sweep before its next run.
    """

    def __init__(self, base: int, count: int, lock_dir: str | None = None) -> None:
        if base < 1000 or count < 1:
            raise ValueError("the uid pool must be unprivileged uids (base >= 1000) and non-empty")
        self.base, self.count = base, count
        self.lock_dir = lock_dir or _lock_dir()
        self._next = random.randrange(count)  # processes started together spread out
        self._mutex = threading.Lock()
        self.quarantined: set[int] = set()  # uids whose sweep did not finish; never reused

    def acquire(self) -> UidLease:
        with self._mutex:
            for _ in range(self.count):
                uid = self.base + self._next
                self._next = (self._next + 1) % self.count
                if uid in self.quarantined:
                    continue
                fd = os.open(os.path.join(self.lock_dir, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                if os.fstat(fd).st_size and not sweep_uid(uid)[1]:  # a crashed holder's leftovers
                    log.error("sandbox uid %d left dirty cannot be swept; quarantined", uid)
                    self.quarantined.add(uid)
                    os.close(fd)
                    continue
                os.pwrite(fd, b"1", 0)
                return UidLease(uid, fd)
        raise RuntimeError(f"no free sandbox uid in [{self.base}, {self.base + self.count})")

    def release(self, lease: UidLease, *, known_clean: bool = False) -> bool:
        """Free the uid once it has no process left; a uid that cannot be swept is quarantined.

        known_clean: the caller has proof that no process of the uid is left (the sandbox's pid
        namespace emptied, see runner.py), so the /proc scan is skipped.
        """
        clean = known_clean or sweep_uid(lease.uid)[1]
        if not clean:
            log.error("sandbox uid %d still has processes after the sweep; quarantined", lease.uid)
            with self._mutex:
                self.quarantined.add(lease.uid)
        lease.close(clean=clean)
        return clean


def _lock_dir() -> str:
    """A root-only directory shared by every verifier process on this host."""
    path = os.path.join(tempfile.gettempdir(), f"bgpo-sandbox-uids-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.getuid() or (st.st_mode & 0o077):
        # Someone else made it: do not trust it; fall back to a private one (no cross-process
        # coordination, so say so).
        log.warning("%s is not ours or not private; uid leases are per-process only", path)
        return tempfile.mkdtemp(prefix="bgpo-sandbox-uids-")
    return path
