"""The memory bound of a sandboxed run: one memory cgroup per run, IPC limits, an inode-capped /tmp.

Why rlimits are not enough: RLIMIT_AS bounds each process's address space, but memory a process
does not map is outside it: memfds and tmpfs files (written with write(), never mapped), SysV
shared memory segments (they outlive every attach), and kernel memory (inodes and dentries of
many empty files, pipe buffers, page tables). One run held 2.75 GiB in memfds, another 2.5 GiB of
SysV shm with never more than 512 MiB mapped (issue 16).

What a run gets (root mode, cgroup v1's memory controller, which these machines have writable):
- A fresh memory cgroup `bgpo-sandbox/run-<pid>-<token>-<n>` under the cgroup this verifier sits
  in, created for the run and removed after it. `memory.limit_in_bytes` (and memsw where the
  kernel has swap accounting) is SandboxConfig.memory_bytes, for the whole RUN: every process
  and thread of it together, and every page charged to them: anonymous memory, page cache,
  tmpfs/memfd/SysV shm pages (shmem), and kernel memory (slab objects such as inodes and
  dentries, page tables, kernel stacks, pipe buffers), which cgroup v1 charges to the same
  counter on this 6.x kernel. Past the bound the kernel reclaims what it can, then OOM-kills a
  process of the run; the supervisor polls the cgroup's oom_kill counter and kills the whole run
  at once, and the run scores 0 with status `wrong`, detail "memory limit: ...".
- The processes are in the cgroup from their first instruction: the sandbox's outer process is
  forked as root and, before it execs prlimit, writes itself to the cgroup's `tasks` (see
  `confine`); bwrap, the harness and candidate code inherit it. A pool uid could not do this
  (the cgroup files are root's), hence the drop to the pool uid happens in the same step. A
  pre-started sandbox (warm.py) joins its cgroup when it is spawned, long before its job.
- Its own IPC namespace, made in that step too (so bwrap is told not to make one), with
  kernel.shmmax/shmall = SandboxConfig.shm_bytes, shmmni and msgmni small. The sandbox has no
  capability in that namespace's owning user namespace, so it cannot raise them; the segments die
  with the namespace, i.e. with the run's last process.
- Its own mount namespace (private propagation), in which a tmpfs with size= tmpfs_bytes and
  nr_inodes= tmp_inodes is mounted on a root-owned host directory that bwrap binds as /tmp.
  bwrap's own --size tmpfs has no inode cap. The mount exists only in the run's namespaces and
  is freed when they end: nothing to wipe, nothing visible on the host.

Fail closed: where no writable memory cgroup exists (not root, cgroup v2 only, a read-only
cgroup fs) the sandbox reports itself unavailable, and code rewards get `sandbox_unavailable`
with the reason, unless the operator opts out with SandboxConfig(allow_no_memory_cgroup=True)
or BGPO_SANDBOX_ALLOW_NO_MEMORY_CGROUP=1: then runs are bounded by the rlimits alone, as
before, and the probe says so ("memory=rlimits only").

TCP buffers (the sandbox has loopback only) are charged by cgroup v1 to a counter of their own,
capped at _TCP_BYTES per run; unix-socket queues are charged to the run's memory.

Cost (2-core VM shared with other jobs, so approximate): spawning /usr/bin/true this way takes
3.1 ms CPU against 1.7 ms with Popen(user=): 0.7 ms for running a Python preexec_fn at all,
0.45 ms for creating, joining and removing the cgroup, 0.1 ms for the IPC namespace and its
limits (bwrap made one before, so that part moved rather than added), 0.15 ms for the mount
namespace and the tmpfs. A whole sandboxed run of a trivial program: 16.5 against 15.0 ms CPU.
The preexec_fn runs in a child forked from a threaded process: it only makes os.* calls and two
ctypes calls prepared in the parent, takes no lock another thread could hold, and reports a
failure on stderr and exits instead of raising.

What it does NOT bound: TCP buffers exactly (their cap is pressure, not a hard limit, and is not
part of memory_bytes), memory the kernel spends on the run's processes before the cgroup join (a
few pages), and unsandboxed runs (allow_unsandboxed=True). Only cgroup v1 is implemented; a
v2-only host fails closed.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

OPT_OUT_ENV = "BGPO_SANDBOX_ALLOW_NO_MEMORY_CGROUP"
CGROUP_FOLDER = "bgpo-sandbox"

_CLONE_NEWNS, _CLONE_NEWIPC = 0x00020000, 0x08000000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 2, 4, 1 << 14, 1 << 18
_SETUP_FAILED = 125  # exit status of a sandbox whose confinement step failed (reason on stderr)
_SHMMNI, _MSGMNI = 32, 32  # SysV segments / message queues per run (a test needs none)
# cgroup v1 counts TCP buffers apart from memory.usage; without a cap 400 loopback connections
# queued 1.5 GiB charged nowhere. The cap works as pressure (sends shrink to a minimum per
# socket), not a hard stop: with 32 MiB, the same 400 connections held 58 MiB at most.
_TCP_BYTES = 32 << 20
_SEQ = itertools.count()  # run cgroup names are unique across every sandbox of this process
# ... and across processes that reuse a pid (a restarted container's verifier often has the same)
_TOKEN = secrets.token_hex(4)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


def opted_out(allow: bool) -> bool:
    """The explicit opt-out: the config flag or BGPO_SANDBOX_ALLOW_NO_MEMORY_CGROUP=1."""
    return allow or os.environ.get(OPT_OUT_ENV, "") not in ("", "0")


def own_memory_cgroup() -> str:
    """The v1 memory cgroup directory this process sits in; raises OSError saying why not."""
    mount = None
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 3 and parts[2] == "cgroup" and "memory" in parts[3].split(","):
                mount = parts[1]
                break
    if mount is None:
        raise OSError("no cgroup v1 memory controller is mounted")
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                return os.path.join(mount, path.lstrip("/"))
    raise OSError("this process is in no v1 memory cgroup (/proc/self/cgroup)")


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class RunCgroup:
    """The memory cgroup of one run: created with its limit, read after the run, then removed."""

    def __init__(self, path: str, limit: int) -> None:
        self.path, self.limit = path, limit
        self.procs = os.path.join(path, "cgroup.procs")
        # What the sandbox's first process writes itself to: its single thread alone is the
        # whole process then, and a write to `tasks` skips the global threadgroup lock that
        # cgroup.procs takes (an RCU grace period: up to a few ms on a loaded host, during which
        # Popen, i.e. the one spawner thread, waits).
        self.join = os.path.join(path, "tasks")

    def oom_kills(self) -> int:
        """Processes of the run the kernel OOM-killed for passing the limit."""
        for line in _read(os.path.join(self.path, "memory.oom_control")).splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def oom_killed(self) -> bool:
        """The supervisor's watch: True once the kernel killed a process of the run."""
        return self.oom_kills() > 0

    def peak(self) -> int:
        """Most bytes charged to the run at any moment (user and kernel memory together)."""
        return int(_read(os.path.join(self.path, "memory.max_usage_in_bytes")))

    def over_limit(self) -> str:
        """"" while the run stays under the limit; else why the run is scored 0."""
        kills = self.oom_kills()
        if not kills:
            return ""
        return (f"memory limit: the run passed {_human(self.limit)} (all its processes, shared "
                f"memory, tmpfs and kernel memory together); {kills} process(es) OOM-killed")

    def remove(self, timeout_s: float = 1.0) -> bool:
        """rmdir the cgroup; any process still in it is SIGKILLed first (only the run's processes
        can be in it: they alone were forked into it). False if it stayed (retried later)."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > end:
                    if timeout_s > 0:  # a retry of a leftover stays quiet
                        log.warning("could not remove the run cgroup %s: %s", self.path, e)
                    return False
            try:
                pids = [int(p) for p in _read(self.procs).split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)  # zombies leave once their reaper has reaped them


class MemoryCgroups:
    """The `bgpo-sandbox` folder of per-run cgroups: checks it, creates and removes children."""

    def __init__(self, limit_bytes: int, root: str | None = None) -> None:
        self.limit = limit_bytes
        self._root_override = root
        self.parent: str | None = None
        self._lock = threading.Lock()
        self._leftover: list[RunCgroup] = []  # could not be removed yet: retried on each release
        self._memsw = False

    def check(self) -> None:
        """Make the parent folder and one run cgroup with its limit; raises OSError saying why not."""
        base = self._root_override if self._root_override is not None else own_memory_cgroup()
        parent = os.path.join(base, CGROUP_FOLDER)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create {parent}: {e.strerror or e}") from e
        if not os.path.exists(os.path.join(parent, "memory.limit_in_bytes")):
            raise OSError(f"{parent} is not a v1 memory cgroup (no memory.limit_in_bytes)")
        self.parent = parent
        self._memsw = os.path.exists(os.path.join(parent, "memory.memsw.limit_in_bytes"))
        self._tcp = os.path.exists(os.path.join(parent, "memory.kmem.tcp.limit_in_bytes"))
        self._sweep_stale()
        probe = self.create()  # the limit must be settable, not just the folder creatable
        if not probe.remove():
            raise OSError(f"cannot remove the cgroup {probe.path}")

    def create(self) -> RunCgroup:
        """A new, empty cgroup with the run's limit (memory first: memsw may never be below it)."""
        assert self.parent is not None, "check() first"
        path = os.path.join(self.parent, f"run-{os.getpid()}-{_TOKEN}-{next(_SEQ)}")
        os.mkdir(path)
        try:
            _write(os.path.join(path, "memory.limit_in_bytes"), str(self.limit))
            if self._memsw:
                _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(self.limit))
            if self._tcp:
                _write(os.path.join(path, "memory.kmem.tcp.limit_in_bytes"), str(_TCP_BYTES))
        except OSError:
            os.rmdir(path)
            raise
        return RunCgroup(path, self.limit)

    def release(self, cg: RunCgroup) -> None:
        """Remove a run's cgroup once its processes are gone (and any left from before)."""
        with self._lock:
            pending, self._leftover = self._leftover, []
        kept = [c for c in pending + [cg] if not c.remove(timeout_s=0 if c is not cg else 1.0)]
        if kept:
            with self._lock:
                self._leftover += kept

    def _sweep_stale(self) -> None:
        """Remove run cgroups that verifier processes which are gone left behind (empty ones;
        one still holding a process stays: rmdir refuses)."""
        assert self.parent is not None
        for name in os.listdir(self.parent):
            parts = name.split("-")
            if len(parts) != 4 or parts[0] != "run" or not parts[1].isdigit():
                continue
            if parts[1] == str(os.getpid()):
                if parts[2] == _TOKEN:
                    continue  # ours: another sandbox of this process may be starting in it
            elif os.path.exists(f"/proc/{parts[1]}"):
                continue  # a live verifier's
            try:
                os.rmdir(os.path.join(self.parent, name))
            except OSError:
                pass


@dataclass(frozen=True)
class Confinement:
    """What `confine` sets up in the forked child before it execs the sandbox."""

    join: str  # the run cgroup's `tasks` file (RunCgroup.join)
    uid: int  # the pool uid to become
    tmp_dir: str  # host directory the private /tmp is mounted on
    tmp_bytes: int
    tmp_inodes: int
    shm_bytes: int


def confine(c: Confinement):
    """A preexec_fn for Popen (started as root, no user=): join the run cgroup, make the run's
    IPC namespace (limits set) and mount namespace (the inode-capped tmpfs), then become the pool
    uid. Runs in the forked child only; everything it needs is built here, in the parent.

    On failure it writes the reason to stderr (already the supervisor's pipe) and exits
    _SETUP_FAILED, so the probe reports which step failed; no candidate code ever runs then.
    """
    tmp_opts = (f"size={c.tmp_bytes},nr_inodes={c.tmp_inodes},mode=0755,"
                f"uid={c.uid},gid={c.uid}").encode()
    tmp_dir = c.tmp_dir.encode()
    pages = max(1, c.shm_bytes // os.sysconf("SC_PAGE_SIZE"))
    sysctls = (("/proc/sys/kernel/shmmax", str(c.shm_bytes).encode()),
               ("/proc/sys/kernel/shmall", str(pages).encode()),
               ("/proc/sys/kernel/shmmni", str(_SHMMNI).encode()),
               ("/proc/sys/kernel/msgmni", str(_MSGMNI).encode()))
    join, uid = c.join, c.uid
    unshare, mount, get_errno = _libc.unshare, _libc.mount, ctypes.get_errno

    def fail(step: str, err: int) -> None:
        os.write(2, f"sandbox setup failed: {step}: {os.strerror(err)}\n".encode())
        os._exit(_SETUP_FAILED)

    def preexec() -> None:
        step = "join the run's memory cgroup"
        try:
            fd = os.open(join, os.O_WRONLY)
            os.write(fd, b"0")  # v1: "0" is the writing thread itself, here the whole process
            os.close(fd)
            step = "unshare the IPC and mount namespaces"
            if unshare(_CLONE_NEWIPC | _CLONE_NEWNS) != 0:
                fail(step, get_errno())
            step = "make the mount namespace private"
            if mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
                fail(step, get_errno())
            step = "mount the inode-capped /tmp"
            if mount(b"tmpfs", tmp_dir, b"tmpfs", _MS_NOSUID | _MS_NODEV, tmp_opts) != 0:
                fail(step, get_errno())
            step = "set the IPC namespace's limits"
            for path, value in sysctls:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, value)
                os.close(fd)
            step = "become the pool uid"
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as e:
            fail(step, e.errno or errno.EPERM)

    return preexec


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"
