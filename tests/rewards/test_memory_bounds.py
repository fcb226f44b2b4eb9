"""Memory of a sandboxed run bounded for real (issue 16, class 4; rewards/sandbox/memory.py).

Each hog tries to hold more than its run may (memfds, SysV shm in 512 MiB slices mapped one at a
time, an empty-file flood in /tmp, anonymous memory over several processes). Each must score 0
within its deadline, the host's Shmem (/proc/meminfo, sampled from a thread) must never rise by
more than the run's limit and must return to its baseline after the run, and a correct answer
must pass right after. A hog's test passes only if the hog held what it tried to, so a bound
that does not hold shows up as a score of 1.0.

Some hogs run twice: with the default IPC/inode limits, which stop them first, and with those
loosened, so that the memory cgroup alone must stop them ("memory limit: ..." in the detail).
The tests skip only where the mechanism is provably absent (not root, no bwrap, no cgroup v1
memory controller mounted); a mounted controller that does not work fails them.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from host_checks import SLACK, ShmemWatch, shmem

from rewards.sandbox import CodeSandbox, SandboxConfig, memory
from rewards.sandbox.launcher import sandbox_argv
from rewards.sandbox.memory import OPT_OUT_ENV, MemoryCgroups, own_memory_cgroup

CORRECT = ("def f(x):\n    return x + 1\n", ["assert f(1) == 2"])
MiB, GiB = 1 << 20, 1 << 30


def _absent() -> str:
    """Why the memory cgroup cannot exist here at all ("" if it should work)."""
    if shutil.which("bwrap") is None or shutil.which("prlimit") is None:
        return "bubblewrap/prlimit not installed"
    if os.geteuid() != 0:
        return "per-run memory cgroups and namespaces need root (not root here)"
    try:
        path = own_memory_cgroup()
    except OSError as e:
        return f"no cgroup v1 memory controller: {e}"
    if not os.access(path, os.W_OK) or os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"the memory cgroup {path} is read-only here"
    return ""


needs_cgroup = pytest.mark.skipif(bool(_absent()), reason=_absent() or "-")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None or shutil.which("prlimit") is None,
                                 reason="bubblewrap/prlimit not installed")


def _make(**kw) -> CodeSandbox:
    box = CodeSandbox(SandboxConfig(**kw))
    ok, reason = box.availability()
    assert ok, f"the memory cgroup should work here but does not: {reason}"
    assert "memory=cgroup v1" in reason, reason
    return box


@pytest.fixture(scope="module")
def box():
    """Default IPC and /tmp limits, a 384 MiB run (smaller than the default 1 GiB: faster)."""
    b = _make(uid_base=262_000, uid_count=60, memory_bytes=384 * MiB, prestart=1)
    yield b
    b.warm.close()


@pytest.fixture(scope="module")
def loose():
    """IPC and inode limits loosened: the 128 MiB cgroup alone has to hold."""
    b = _make(uid_base=262_100, uid_count=40, memory_bytes=128 * MiB, shm_bytes=8 * GiB,
              tmp_inodes=2_000_000, prestart=1)
    yield b
    b.warm.close()


def _hog_run(sandbox: CodeSandbox, program: str, deadline_s: float = 10.0):
    """Run a hog under the Shmem watch; check the bounds every hog must keep."""
    limit = sandbox.config.memory_bytes
    start = time.monotonic()
    with ShmemWatch() as watch:
        r = sandbox.run(program, ["assert f(1) == 2"], deadline_s=deadline_s)
    wall = time.monotonic() - start
    assert r.status != "ok" and r.passed == 0, (r.status, r.detail)
    assert r.status != "timeout" and wall < deadline_s + 2, (r.status, wall)
    assert watch.peak - watch.baseline <= limit + SLACK, (watch.peak - watch.baseline) >> 20
    assert r.extra["memory_peak_bytes"] <= limit
    assert watch.back_to_baseline(), (shmem() - watch.baseline) >> 20
    after = sandbox.run(*CORRECT, deadline_s=5)
    assert after.status == "ok", after.detail
    return r


MEMFD_HOG = """
import os
HELD = 0
try:
    chunk, fds = b"m" * (1 << 20), []
    while HELD < (5 << 29):  # 2.5 GiB, never mapped
        if HELD % (16 << 20) == 0:  # RLIMIT_FSIZE caps each file at 16 MiB: take another
            fds.append(os.memfd_create("hog"))
        os.write(fds[-1], chunk)
        HELD += len(chunk)
except OSError:
    pass
def f(x):
    return x + 1 if HELD >= (5 << 29) else None
"""

SYSV_HOG = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmdt.argtypes = [ctypes.c_void_p]
HELD, SLICE = 0, 512 << 20
while HELD < (5 << 29) and SLICE >= (1 << 20):
    shmid = libc.shmget(0, SLICE, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    addr = libc.shmat(shmid, None, 0) if shmid >= 0 else None
    if addr in (None, ctypes.c_void_p(-1).value):
        SLICE //= 2  # a limit said no: try smaller slices
        continue
    ctypes.memset(addr, 1, SLICE)  # every page touched, so really held
    libc.shmdt(ctypes.c_void_p(addr))  # never more than one slice mapped; the segment stays
    HELD += SLICE
def f(x):
    return x + 1 if HELD >= (5 << 29) else None
"""

INODE_FLOOD = """
import os
HELD = 0
try:
    while HELD < 350_000:  # empty files: no data, only kernel memory (inodes, dentries)
        os.close(os.open("/tmp/%d" % HELD, os.O_CREAT | os.O_WRONLY, 0o600))
        HELD += 1
except OSError:
    pass
def f(x):
    return x + 1 if HELD >= 350_000 else None
"""

ANON_HOG = """
import os, time
kids = []
for _ in range(4):  # each one under RLIMIT_AS (1 GiB), together over the run's limit
    pid = os.fork()
    if pid == 0:
        x = b"a" * (300 << 20)  # written, so resident
        time.sleep(5)
        os._exit(0)
    kids.append(pid)
FINE = sum(os.waitpid(pid, 0)[1] == 0 for pid in kids)
def f(x):
    return x + 1 if FINE == 4 else None
"""

TCP_HOG = """
import socket
HELD, conns = 0, []
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(200)
try:
    for _ in range(120):  # RLIMIT_NOFILE (256) allows about this many connections
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
        a.setblocking(False)
        conns.append((a, b))
        try:
            while True:  # nobody reads: the bytes sit in kernel buffers
                HELD += a.send(b"t" * 65536)
        except OSError:
            pass
except OSError:
    pass
def f(x):
    return x + 1 if HELD >= (256 << 20) else None  # uncapped: about 450 MiB
"""


@needs_cgroup
def test_memfd_hog_is_killed_at_the_default_limit():
    sandbox = _make(uid_base=262_200, uid_count=20, prestart=1)  # the default 1 GiB per run
    try:
        r = _hog_run(sandbox, MEMFD_HOG)
        assert r.detail.startswith("memory limit:") and r.extra["memory_limit"] is True, r.detail
        assert r.extra["memory_peak_bytes"] >= GiB - 64 * MiB  # it was stopped at the bound
    finally:
        sandbox.warm.close()


@needs_cgroup
def test_concurrent_hogs_are_each_bounded_and_correct_runs_unaffected(box):
    results: dict[int, object] = {}
    programs = [MEMFD_HOG, CORRECT[0], MEMFD_HOG, CORRECT[0]]

    def one(i: int) -> None:
        results[i] = box.run(programs[i], CORRECT[1], deadline_s=10)

    with ShmemWatch() as watch:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(programs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [results[i].status for i in range(4)] == ["wrong", "ok", "wrong", "ok"]
    assert all(results[i].detail.startswith("memory limit:") for i in (0, 2))
    assert watch.peak - watch.baseline <= 2 * box.config.memory_bytes + SLACK
    assert watch.back_to_baseline()


@needs_cgroup
def test_sysv_shm_hog_is_stopped_by_the_ipc_limits(box):
    r = _hog_run(box, SYSV_HOG)
    assert r.detail.startswith("test 0"), r.detail  # shmmax/shmall said no: it held 64 MiB only


@needs_cgroup
def test_sysv_shm_hog_is_killed_by_the_cgroup_alone(loose):
    r = _hog_run(loose, SYSV_HOG)
    assert r.detail.startswith("memory limit:"), r.detail


@needs_cgroup
def test_tmp_inode_flood_is_stopped_by_the_inode_cap(box):
    r = _hog_run(box, INODE_FLOOD)
    assert r.detail.startswith("test 0"), r.detail  # ENOSPC after tmp_inodes files


@needs_cgroup
def test_tmp_inode_flood_is_killed_by_the_cgroup_alone(loose):
    r = _hog_run(loose, INODE_FLOOD)  # kernel memory (inodes, dentries) is charged too
    assert r.detail.startswith("memory limit:"), r.detail


@needs_cgroup
def test_anonymous_memory_over_several_processes_is_killed(box):
    r = _hog_run(box, ANON_HOG)
    assert r.detail.startswith("memory limit:"), r.detail
    # The kernel killed one child; the others would sleep 5 s more. The supervisor's watch of
    # the cgroup killed the whole run at once instead.
    assert r.seconds < 4, r.seconds


@needs_cgroup
def test_tmpfs_pages_and_inodes_are_charged_to_the_run(box):
    """Within the caps a run may use /tmp; what it writes counts against its memory."""
    program = ("import os\n"
               "for i in range(4):  # RLIMIT_FSIZE: 16 MiB a file\n"
               "    with open('/tmp/data%d' % i, 'wb') as fh:\n"
               "        fh.write(b'd' * (12 << 20))\n"
               "for i in range(4000):\n"
               "    os.close(os.open('/tmp/e%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))\n"
               "def f(x):\n"
               "    return x + 1\n")
    r = box.run(program, ["assert f(1) == 2"], deadline_s=10)
    assert r.status == "ok", r.detail
    assert r.extra["memory_peak_bytes"] >= 50 * MiB  # 48 MiB of pages + 4000 inodes + Python


@needs_cgroup
def test_loopback_tcp_buffers_are_capped(box):
    r = _hog_run(box, TCP_HOG)  # v1 counts TCP buffers apart: their own (soft) cap holds them
    assert r.detail.startswith("test 0"), r.detail


def test_confined_argv_keeps_the_prepared_ipc_namespace_and_binds_the_capped_tmp():
    argv = sandbox_argv(SandboxConfig(), uid=200_001, cpu_seconds=3, nproc=64, tmp_bind="/x/tmp")
    joined = " ".join(argv)
    assert "--unshare-all" not in argv and "--unshare-ipc" not in argv  # made before exec
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-uts",
                 "--unshare-cgroup-try", "--disable-userns", "--as-pid-1"):
        assert flag in argv
    assert "--bind /x/tmp /tmp" in joined and "--tmpfs" not in argv


@needs_cgroup
def test_inside_the_run_the_limits_are_set(box):
    program = (
        "import os\n"
        "sysctl = {k: open('/proc/sys/kernel/' + k).read().strip()\n"
        "          for k in ('shmmax', 'shmall', 'shmmni', 'msgmni')}\n"
        "tmp = [l.split(' - ')[1] for l in open('/proc/self/mountinfo') if ' /tmp ' in l]\n"
        "def f(x):\n"
        "    return sysctl, tmp\n")
    test = ("sysctl, tmp = f(1)\n"
            "assert sysctl == {'shmmax': str(64 << 20), 'shmall': str((64 << 20) // 4096), "
            "'shmmni': '32', 'msgmni': '32'}, sysctl\n"
            "assert len(tmp) == 1 and 'size=65536k' in tmp[0] and 'nr_inodes=8192' in tmp[0], tmp\n")
    r = box.run(program, [test], deadline_s=5)
    assert r.status == "ok", r.detail


@needs_cgroup
def test_run_cgroups_are_removed_after_their_runs():
    sandbox = _make(uid_base=262_300, uid_count=20, prestart=0)
    mine = f"run-{os.getpid()}-"

    def left() -> list[str]:
        return [n for n in os.listdir(sandbox.cgroups.parent) if n.startswith(mine)]

    before = set(left())  # other sandboxes of this test process may have waiting runs
    for program in (CORRECT[0], "import os\nos.fork()\nwhile True:\n    pass\n"):
        sandbox.run(program, CORRECT[1], deadline_s=0.5)
    assert set(left()) <= before


@needs_cgroup
def test_stale_run_cgroups_of_gone_verifiers_are_swept_and_live_ones_kept():
    parent = os.path.join(own_memory_cgroup(), "bgpo-sandbox")
    os.makedirs(parent, exist_ok=True)
    gone_pid = (1 << 22) + 7  # above any pid_max: no such process
    names = {"gone": f"run-{gone_pid}-00000000-0",
             "earlier me": f"run-{os.getpid()}-00000000-0",  # same pid, another incarnation
             "me now": f"run-{os.getpid()}-{memory._TOKEN}-999999"}
    for name in names.values():
        os.makedirs(os.path.join(parent, name), exist_ok=True)
    try:
        MemoryCgroups(64 * MiB).check()
        left = {k for k, n in names.items() if os.path.isdir(os.path.join(parent, n))}
        assert left == {"me now"}  # it may be a sandbox of this process about to join it
    finally:
        for name in names.values():
            if os.path.isdir(os.path.join(parent, name)):
                os.rmdir(os.path.join(parent, name))


# ----- fail closed -----------------------------------------------------------------------------
@needs_bwrap
@pytest.mark.parametrize("root", ["not-a-cgroup", "/proc/bgpo-no-such-dir"])
def test_without_a_memory_cgroup_code_runs_fail_closed(root, tmp_path, monkeypatch):
    monkeypatch.delenv(OPT_OUT_ENV, raising=False)
    where = str(tmp_path) if root == "not-a-cgroup" else root
    broken = CodeSandbox(SandboxConfig(uid_base=262_400, uid_count=10, cgroup_root=where))
    ok, reason = broken.availability()
    assert not ok and "memory cgroup unavailable" in reason and OPT_OUT_ENV in reason, reason
    r = broken.run(*CORRECT, deadline_s=5)
    assert (r.status, r.passed) == ("sandbox_unavailable", 0)
    assert "memory cgroup unavailable" in r.detail


@needs_bwrap
@pytest.mark.parametrize("how", ["config", "env"])
def test_the_explicit_opt_out_runs_bounded_by_rlimits_and_says_so(how, tmp_path, monkeypatch):
    monkeypatch.delenv(OPT_OUT_ENV, raising=False)
    if how == "env":
        monkeypatch.setenv(OPT_OUT_ENV, "1")
    box = CodeSandbox(SandboxConfig(uid_base=262_420, uid_count=10, cgroup_root=str(tmp_path),
                                    allow_no_memory_cgroup=how == "config", prestart=0))
    ok, reason = box.availability()
    assert ok and "memory=rlimits only" in reason, reason
    r = box.run(*CORRECT, deadline_s=5)
    assert r.status == "ok" and "memory_peak_bytes" not in r.extra, r.detail


@needs_cgroup
def test_a_failing_confinement_step_fails_the_probe_with_its_reason():
    broken = CodeSandbox(SandboxConfig(uid_base=262_440, uid_count=10, tmp_inodes=-1))
    ok, reason = broken.availability()
    assert not ok and "sandbox setup failed: mount the inode-capped /tmp" in reason, reason
    assert broken.run(*CORRECT, deadline_s=5).status == "sandbox_unavailable"
