"""The isolation pool: deadlines kill and replace children; bad calls do not poison it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rewards.isolation import IsolationPool

STALL = ("3", "9^{9^{9^{9}}}")  # math-verify holds the GIL for a minute on this


@pytest.fixture(scope="module")
def pool():
    p = IsolationPool(1)
    yield p
    p.close()


def child_pid(pool: IsolationPool) -> int:
    return pool._idle.queue[0].process.pid


def test_call_returns_value(pool):
    result = pool.call("rewards.mathcheck:verify", "\\frac{1}{2}", "0.5", deadline_s=30)
    assert (result.status, result.value) == ("ok", True)


def test_overrun_child_is_killed_and_replaced(pool):
    pool.call("rewards.mathcheck:verify", "1", "1", deadline_s=30)  # make sure the child is warm
    old = child_pid(pool)
    start = time.monotonic()
    result = pool.call("rewards.mathcheck:verify", *STALL, deadline_s=1.0)
    assert result.status == "timeout" and time.monotonic() - start < 3.0
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)  # SIGKILLed and reaped, not abandoned
    assert child_pid(pool) != old
    assert pool.call("rewards.mathcheck:verify", "2", "2", deadline_s=30).value is True
    assert pool.health()["restarts"] >= 1


def test_only_package_functions_may_be_called(pool):
    result = pool.call("os:system", "true", deadline_s=5)
    assert result.status == "error" and "rewards." in result.detail
    assert pool.call("rewards.mathcheck:verify", "2", "3", deadline_s=30).value is False


def test_child_killed_from_outside_is_replaced(pool):
    pool.call("rewards.mathcheck:verify", "1", "1", deadline_s=30)
    os.kill(child_pid(pool), signal.SIGKILL)
    time.sleep(0.1)
    # A child that died while idle is replaced before the call; the caller never sees it.
    assert pool.call("rewards.mathcheck:verify", "1", "1", deadline_s=30).value is True
    assert pool.health()["restarts"] >= 1


def test_child_dying_mid_call_is_an_error_and_replaced(pool):
    import threading

    pool.call("rewards.mathcheck:verify", "1", "1", deadline_s=30)
    pid = child_pid(pool)
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    start = time.monotonic()
    result = pool.call("rewards.mathcheck:verify", *STALL, deadline_s=30)
    assert result.status == "error" and "died" in result.detail
    assert time.monotonic() - start < 5
    assert pool.call("rewards.mathcheck:verify", "1", "1", deadline_s=30).value is True


def test_closed_pool_refuses():
    p = IsolationPool(1)
    pid = child_pid(p)
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.call("rewards.mathcheck:verify", "1", "1", deadline_s=5)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_busy_children_die_with_their_parent(tmp_path):
    """A parent that dies without cleanup (os._exit) takes a stuck child with it."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, threading, time\n"
        "from rewards.isolation import IsolationPool\n"
        "pool = IsolationPool(1)\n"
        "pool.call('rewards.mathcheck:verify', '1', '1', deadline_s=30)\n"
        "print(pool._idle.queue[0].process.pid, flush=True)\n"
        "threading.Thread(target=pool.call, args=('rewards.mathcheck:verify', '3',\n"
        "    '9^{9^{9^{9}}}'), kwargs={'deadline_s': 60}, daemon=True).start()\n"
        "time.sleep(0.5)\n"
        "os._exit(0)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    pytest.fail(f"isolation child {pid} outlived its parent")


def test_math_checkers_never_load_in_the_scoring_process():
    """math-verify (lenient) and BGPO's sympy grader (bgpo) run only in the isolation children."""
    import subprocess
    import sys

    code = ("import sys\nfrom rewards import score\n"
            "item = {'reward_model': {'ground_truth': '3\\\\sqrt{13}'}}\n"
            "for preset in ('lenient', 'bgpo'):\n"
            "    r = score('math', '\\\\boxed{\\\\sqrt{117}}', item, preset=preset)\n"
            "    print(r.status, r.extra['method'], 'math_verify' in sys.modules, 'sympy' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    assert [line.split() for line in out.stdout.splitlines()] == [
        ["ok", "math_verify", "False", "False"], ["ok", "sympy", "False", "False"]]
