"""The sandbox's parts: command line, what the inside looks like, supervisor, uid pool, verdicts,
fail-closed behaviour and the harness's strict comparator."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
from collections import Counter, OrderedDict, namedtuple
from enum import IntEnum

import pytest

from rewards import code_harness as harness
from rewards.sandbox import CodeSandbox, SandboxConfig
from rewards.sandbox.launcher import bwrap_version, pick_interpreter, sandbox_argv
from rewards.sandbox.runner import judge
from rewards.sandbox.strict_rewrite import strict_test_source
from rewards.sandbox.supervisor import ProcessOutcome, run_process
from rewards.sandbox.uid_pool import UidPool, pids_of_uid, sweep_uid

HAVE_BWRAP = shutil.which("bwrap") is not None and shutil.which("prlimit") is not None
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap/prlimit not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the uid pool needs root")
TEST_F = ["assert f(1) == 2"]


@pytest.fixture(scope="module")
def sandbox():
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap/prlimit not installed")
    box = CodeSandbox(SandboxConfig(uid_base=260_000, uid_count=100))
    ok, reason = box.availability()
    assert ok, f"bwrap is installed but the sandbox does not work: {reason}"
    return box


# ----- the command line ------------------------------------------------------------------------
def test_argv_follows_the_recipe():
    argv = sandbox_argv(SandboxConfig(), uid=200_001, cpu_seconds=3.2, nproc=64)
    joined = " ".join(argv)
    assert argv[0] == "prlimit" and argv[argv.index("--") + 1] == "bwrap"
    for flag in ("--as=1073741824", "--nproc=64", "--fsize=16777216", "--nofile=256", "--cpu=4",
                 "--core=0"):
        assert flag in argv
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1",
                 "--unshare-user", "--disable-userns", "--clearenv"):
        assert flag in argv
    assert "--cap-drop ALL" in joined and "--uid 200001 --gid 200001" in joined
    assert "--ro-bind /usr /usr" in joined and "--remount-ro /" in joined
    assert argv[-3:] == ["-I", "-S", "/sandbox/code_harness.pyc"]  # precompiled harness
    assert "--bind" not in argv  # nothing of the host is writable


@needs_bwrap
def test_bwrap_is_new_enough():
    assert bwrap_version() >= (0, 8), "--disable-userns and --size need bubblewrap 0.8"


def test_interpreter_choice(monkeypatch):
    monkeypatch.delenv("BGPO_SANDBOX_PYTHON", raising=False)
    if os.access("/usr/bin/python3", os.X_OK):
        python, binds = pick_interpreter(SandboxConfig())
        assert python.startswith("/usr/") and binds == []
    python, binds = pick_interpreter(SandboxConfig(python="/opt/py/bin/python3.11"))
    assert binds == ["/opt/py"]  # outside /usr: its prefix is bound read-only


# ----- the inside --------------------------------------------------------------------------------
def test_inside_view(sandbox):
    """uid, capabilities, limits, filesystem and network as seen by the candidate."""
    program = (
        "import os, resource, socket\n"
        "def f(x):\n"
        "    caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
        "    facts = dict(root=os.getuid() == 0, caps=caps.split()[1],\n"
        "        nproc=resource.getrlimit(resource.RLIMIT_NPROC)[0],\n"
        "        as_=resource.getrlimit(resource.RLIMIT_AS)[0],\n"
        "        fsize=resource.getrlimit(resource.RLIMIT_FSIZE)[0],\n"
        "        nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0],\n"
        "        top=sorted(os.listdir('/')), procs=len([p for p in os.listdir('/proc')\n"
        "                                                 if p.isdigit()]),\n"
        "        ifaces=[n for _, n in socket.if_nameindex()], usr_ro=not os.access('/usr', os.W_OK))\n"
        "    return facts\n")
    test = ("facts = f(1)\n"
            "assert facts['root'] is False and facts['caps'] == '0000000000000000'\n"
            "assert facts['nproc'] == 64 and facts['as_'] == 1 << 30\n"
            "assert facts['fsize'] == 16 << 20 and facts['nofile'] == 256\n"
            "assert facts['top'] == ['bin', 'dev', 'lib', 'lib64', 'proc', 'sandbox', 'sbin', "
            "'tmp', 'usr']\n"
            "assert facts['procs'] <= 3 and facts['ifaces'] == ['lo'] and facts['usr_ro']\n")
    result = sandbox.run(program, [test], deadline_s=5)
    assert result.status == "ok", result.detail


def test_concurrent_runs_from_many_threads(sandbox):
    results = []

    def one(i):
        results.append(sandbox.run(f"def f(x):\n    return x + {i}\n",
                                   [f"assert f(1) == {i + 1}"], deadline_s=5))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == ["ok"] * 6
    if os.geteuid() == 0:
        assert len({r.extra["uid"] for r in results}) == 6  # a fresh uid per run


def test_runs_from_short_lived_threads_are_not_orphaned(sandbox):
    """Spawning happens on one long-lived thread, so a caller thread's exit kills nothing."""
    out = []
    t = threading.Thread(target=lambda: out.append(
        sandbox.run("import time\ntime.sleep(0.3)\ndef f(x):\n    return x + 1\n", TEST_F,
                    deadline_s=5)))
    t.start()
    t.join()
    assert out[0].status == "ok"


# ----- fail closed -----------------------------------------------------------------------------
def test_fail_closed_without_a_working_sandbox():
    broken = CodeSandbox(SandboxConfig(python="/nonexistent/bin/python3"))
    assert broken.available() is False
    result = broken.run("def f(x):\n    return x + 1\n", TEST_F, deadline_s=5)
    assert (result.status, result.passed) == ("sandbox_unavailable", 0)


@needs_bwrap
def test_allow_unsandboxed_runs_and_says_so():
    broken = CodeSandbox(SandboxConfig(python="/nonexistent/bin/python3"))
    result = broken.run("def f(x):\n    return x + 1\n", TEST_F, deadline_s=5,
                        allow_unsandboxed=True)
    assert result.status == "ok", result.detail
    assert result.sandboxed is False and result.extra["sandboxed"] is False
    timeout = broken.run("while True:\n    pass\n", TEST_F, deadline_s=1, allow_unsandboxed=True)
    assert timeout.status == "timeout"


# ----- sandboxes started ahead (warm.py) and the uid left behind --------------------------------
def _live(uid: int) -> list[int]:
    return pids_of_uid(uid, zombies=False)


def _eventually(predicate, timeout_s: float = 10.0) -> bool:
    """Process starts and kills land asynchronously: poll instead of sampling once."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@needs_root
def test_each_prestarted_sandbox_serves_one_run_and_leaves_nothing(sandbox):
    runs = [sandbox.run("def f(x):\n    return x + 1\n", TEST_F, deadline_s=5) for _ in range(5)]
    assert [r.status for r in runs] == ["ok"] * 5
    uids = [r.extra["uid"] for r in runs]
    assert len(set(uids)) == 5  # a fresh uid, so a fresh sandbox, for every run
    waiting = sandbox.warm.reserved_uids()
    assert waiting and not waiting & set(uids)
    for r in runs:  # the harness exited by itself: the emptied pid namespace is the proof
        assert r.extra["uid_cleanup"] == "pid namespace" and r.extra["uid_clean"] is True
        assert _live(r.extra["uid"]) == []
    # The next runs' sandboxes: started (their processes come up asynchronously), waiting on stdin.
    assert _eventually(lambda: any(_live(uid) for uid in sandbox.warm.reserved_uids()))


@needs_root
def test_timeout_sweeps_the_uid(sandbox):
    r = sandbox.run("import os\nos.fork()\nwhile True:\n    pass\n", TEST_F, deadline_s=0.5)
    assert r.status == "timeout" and r.extra["uid_cleanup"] == "sweep"
    assert r.extra["uid_clean"] is True and _live(r.extra["uid"]) == []


@needs_bwrap
def test_deadline_counts_from_the_job_not_from_the_start():
    box = CodeSandbox(SandboxConfig(uid_base=261_000, uid_count=20))
    assert box.available()
    box.run("x = 1\n", ["assert x == 1"], deadline_s=1.0)  # leaves a sandbox waiting
    time.sleep(1.5)  # longer than the deadline: waiting is not running
    r = box.run("import time\ntime.sleep(0.3)\ndef f(x):\n    return x + 1\n", TEST_F,
                deadline_s=1.0)
    assert r.status == "ok", r.detail
    box.warm.close()


@needs_bwrap
def test_prestarted_sandbox_that_died_is_replaced_and_close_frees_everything():
    box = CodeSandbox(SandboxConfig(uid_base=261_100, uid_count=20))
    assert box.available()
    box.run("x = 1\n", ["assert x == 1"], deadline_s=5)
    deadline = time.monotonic() + 10
    while not box.warm._ready.get(6) and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = box.warm._ready[6][0]
    os.killpg(waiting.proc.pid, 9)  # killed from outside while it waited for its job
    waiting.proc.wait()
    r = box.run("def f(x):\n    return x + 1\n", TEST_F, deadline_s=5)
    assert r.status == "ok", r.detail
    reserved = box.warm.reserved_uids()
    box.warm.close()
    if os.geteuid() == 0:  # close() kills them; the kernel reaps them a moment later
        for uid in reserved | {r.extra["uid"]}:
            assert _eventually(lambda uid=uid: _live(uid) == []), (uid, _live(uid))


@needs_root
def test_warm_pool_is_bounded_across_deadlines():
    box = CodeSandbox(SandboxConfig(uid_base=261_200, uid_count=20, prestart=2))
    assert box.available()
    for deadline in (1, 2, 3, 4, 5, 6):  # each deadline is its own key (prlimit's CPU seconds)
        assert box.run("x = 1\n", ["assert x == 1"], deadline_s=deadline).status == "ok"
    time.sleep(0.5)
    assert len(box.warm.reserved_uids()) <= 2
    box.warm.close()


@needs_root
def test_uid_left_dirty_by_a_crashed_holder_is_swept_before_reuse(tmp_path):
    uid = 300_200
    (tmp_path / str(uid)).write_bytes(b"1")  # a lease whose holder died mid-run
    leftover = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[],
                                start_new_session=True)
    pool = UidPool(uid, 1, str(tmp_path))
    lease = pool.acquire()
    assert lease.uid == uid and leftover.wait(timeout=5) == -9
    assert pool.release(lease, known_clean=True)
    assert (tmp_path / str(uid)).read_bytes() == b""  # released clean: no sweep next time


# ----- supervisor ------------------------------------------------------------------------------
def test_grandchild_holding_the_pipes_does_not_hang_us():
    start = time.monotonic()
    out = run_process(["/bin/sh", "-c", "sleep 30 & echo hi"], b"", deadline_s=10)
    assert time.monotonic() - start < 2 and out.stdout == b"hi\n" and not out.timed_out


def test_deadline_kills_the_process_group():
    start = time.monotonic()
    out = run_process(["/bin/sh", "-c", "sleep 30; sleep 30"], b"", deadline_s=0.5)
    assert out.timed_out and time.monotonic() - start < 1.5


def test_output_cap_and_unread_stdin():
    out = run_process(["/bin/sh", "-c", "yes"], b"", deadline_s=5, stdout_cap=1 << 16)
    assert out.overflow and len(out.stdout) == 1 << 16
    start = time.monotonic()  # a child that never reads 8 MiB of stdin must not block us
    out = run_process(["/bin/sh", "-c", "sleep 0.2"], b"x" * (8 << 20), deadline_s=5)
    assert not out.timed_out and time.monotonic() - start < 2


def test_deadline_counts_from_the_start_marker_not_from_the_spawn():
    # Start-up (here a 1.5 s sleep before the marker) is not the program's time: a 1 s deadline
    # still lets a program that then runs for 0.3 s finish, and `seconds` counts from the marker.
    script = "sleep 1.5; echo started; cat >/dev/null; sleep 0.3; echo done"
    out = run_process(["/bin/sh", "-c", script], b"job", deadline_s=1.0, started=b"started\n")
    assert not out.timed_out and out.stdout == b"done\n" and 0.3 <= out.seconds < 1.0, out
    out = run_process(["/bin/sh", "-c", "echo started; sleep 30"], b"", deadline_s=0.5,
                      started=b"started\n")
    assert out.timed_out  # after the marker the deadline holds as ever


def test_a_child_that_dies_before_its_start_marker_is_not_fed():
    out = run_process(["/bin/sh", "-c", "echo bwrap: setup failed >&2; exit 1"], b"job",
                      deadline_s=5, started=b"started\n")
    assert out.returncode is None and b"setup failed" in out.stderr and not out.timed_out, out
    out = run_process(["/bin/sh", "-c", "echo something else; sleep 30"], b"job", deadline_s=5,
                      started=b"started\n")
    assert out.returncode is None and out.stdout == b"" and not out.timed_out, out


# ----- uid pool --------------------------------------------------------------------------------
@needs_root
def test_uid_leases_are_exclusive_across_pools(tmp_path):
    a, b = UidPool(300_000, 2, str(tmp_path)), UidPool(300_000, 2, str(tmp_path))
    la, lb = a.acquire(), b.acquire()
    assert la.uid != lb.uid
    with pytest.raises(RuntimeError):
        a.acquire()
    a.release(la)
    assert b.acquire().uid == la.uid


@needs_root
def test_sweep_kills_every_process_of_the_uid():
    uid = 300_100
    procs = [subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[],
                              start_new_session=True) for _ in range(3)]
    assert len(pids_of_uid(uid, zombies=False)) == 3
    sent, clean = sweep_uid(uid)
    assert clean and sent >= 3
    for p in procs:
        assert p.wait(timeout=5) == -9


# ----- verdicts ----------------------------------------------------------------------------------
def _outcome(stdout: str, **kw) -> ProcessOutcome:
    base = dict(returncode=0, stdout=stdout.encode(), stderr=b"", timed_out=False,
                overflow=False, seconds=0.1)
    base.update(kw)
    return ProcessOutcome(**base)


@pytest.mark.parametrize("stdout,status", [
    ("N ready\nN result 0 pass\nN result 1 pass\nN done 2\n", "ok"),
    ("N ready\nN result 0 pass\nN result 1 pass\n", "wrong"),  # no final line
    ("N ready\nN result 0 pass\nN done 2\n", "wrong"),  # a test without a line
    ("N ready\nN result 0 pass\nN result 1 fail 4e6f\nN done 2\n", "wrong"),
    ("N ready\nM result 0 pass\nM result 1 pass\nM done 2\n", "wrong"),  # wrong nonce
    ("PASS\nresult 0 pass\nresult 1 pass\ndone 2\n", "error"),  # no ready: did not start
    ("N ready\nN result 0 pass\nN result 1 pass\nN done 3\n", "wrong"),  # wrong count
])
def test_judge_trusts_only_complete_nonce_lines(stdout, status):
    assert judge(_outcome(stdout), "N", 2).status == status


def test_judge_timeout_and_overflow_win():
    full = "N ready\nN result 0 pass\nN done 1\n"
    assert judge(_outcome(full, timed_out=True), "N", 1).status == "timeout"
    assert judge(_outcome(full, overflow=True), "N", 1).status == "wrong"


# ----- strict comparison (runs in-process: it is plain Python) ------------------------------------
def test_strict_equality_rules():
    eq = harness._strict_eq
    assert eq(1, 1.0) and eq(True, 1) and eq(0.1 + 0.2, 0.3) and not eq(1.0, 1.1)
    assert eq([1, (2, "a")], [1, (2, "a")]) and not eq([1], (1,))
    assert eq({"a": [1.0]}, {"a": [1]}) and not eq({"a": 1}, {"b": 1})
    assert eq({1, 2}, frozenset({1, 2})) and not eq("1", 1)
    assert not eq(math.nan, math.nan)


def test_plain_rejects_custom_objects_and_normalises_collections():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    class Sneaky(int):
        def __eq__(self, other):
            return True

    for bad in (AlwaysEqual(), [AlwaysEqual()], {"k": AlwaysEqual()}, (1, object())):
        with pytest.raises(harness.StrictComparisonError):
            harness.plain(bad)
    sneaky = harness.plain({"k": Sneaky(3)})  # read as the int it holds; its __eq__ is gone
    assert type(sneaky["k"]) is int and not harness._strict_eq(sneaky, {"k": 5})
    assert harness.plain(Counter("aab")) == {"a": 2, "b": 1}
    assert type(harness.plain(OrderedDict(a=1))) is dict
    point = namedtuple("Point", "x y")(1, 2)
    assert type(harness.plain(point)) is tuple and harness.plain(point) == (1, 2)

    class Liar(list):  # subclass methods never run: the base type's C methods read it
        def __iter__(self):
            return iter([9, 9])

    assert harness.plain(Liar([1, 2])) == [1, 2]
    assert type(harness.plain(IntEnum("E", "A B").B)) is int


def test_rewritten_tests_use_the_strict_comparator():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

        def __bool__(self):
            return True

    for src in ("assert x == 2", "assert not (x != 2)", "assert x", "assert x and True",
                "assert 2 == x", "assert [x] == [2]"):
        scope = {"x": AlwaysEqual(), "__bgpo_cmp__": harness._strict_cmp,
                 "__bgpo_truth__": harness._strict_truth}
        with pytest.raises(AssertionError):
            exec(strict_test_source(src), scope)
    scope = {"x": [1, 2.0], "__bgpo_cmp__": harness._strict_cmp,
             "__bgpo_truth__": harness._strict_truth}
    exec(strict_test_source("assert x == [1, 2] and 1 in x and x[0] < x[1] <= 2"), scope)
