"""Hostile programs against the code sandbox (rewards.md section 4, the categories that apply to code).

Each case is built so that the attack, if it worked, would make the test pass: the candidate's
f(x) returns x + 1 only when it escaped, read the secret, reached the network, etc. So score 0
means the attack failed, not merely that the code was wrong. Every case also checks: finished
within the deadline (+ slack), no live process left for any pool uid, no file written on the host,
the secret not in the detail, and a correct program scores 1.0 right afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from host_checks import ShmemWatch

from rewards.sandbox import CodeSandbox, SandboxConfig
from rewards.sandbox.uid_pool import pids_of_uid

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("prlimit") is None,
    reason="bubblewrap/prlimit not installed: the sandbox cannot run here")

DEADLINE = 2.0
SLACK = 2.0  # spawn + kill + sweep (+ teardown of a 1 GiB process) on a loaded 2-core box
TOKEN = secrets.token_hex(8)  # the secret and the marker of files an escape would write
REPO = Path(__file__).resolve().parents[2]
TEST_F = ["assert f(1) == 2"]
GOOD = "def f(x):\n    return x + 1\n"


@pytest.fixture(scope="module")
def sandbox():
    # A uid range of its own: a verifier running on this host (same default range) must not
    # show up in this module's "no process left" checks.
    box = CodeSandbox(SandboxConfig(uid_base=250_000, uid_count=200))
    ok, reason = box.availability()
    assert ok, f"bwrap is installed but the sandbox does not work: {reason}"
    return box


@pytest.fixture(scope="module")
def host():
    """Host-side bait: a secret in our environment, a listener, a victim process, secret files."""
    os.environ["BGPO_TEST_SECRET"] = TOKEN
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", TOKEN])
    yield {"port": listener.getsockname()[1], "victim": victim.pid, "listener": listener}
    victim.kill()
    victim.wait()
    listener.close()
    os.environ.pop("BGPO_TEST_SECRET", None)


def _escape_paths() -> list[str]:
    return [f"/tmp/pwned-{TOKEN}", str(REPO / f"pwned-{TOKEN}"), f"/root/pwned-{TOKEN}",
            f"/usr/pwned-{TOKEN}", f"/pwned-{TOKEN}"]


def _cases(host: dict) -> dict[str, tuple[str, str, list[str]]]:
    """name -> (program, expected status ("a|b": either), tests)."""
    port, victim = host["port"], host["victim"]
    escaped = "def f(x):\n    return x + 1 if ESCAPED else None\n"
    return {
        "fork_bomb_os": ("import os\nwhile True:\n    try:\n        os.fork()\n"
                         "    except OSError:\n        pass\n", "timeout", TEST_F),
        "fork_bomb_ctypes": ("import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n"
                             "    libc.fork()\n", "timeout", TEST_F),
        "infinite_loop": ("while True:\n    pass\n", "timeout", TEST_F),
        "long_sleep": ("import time\ntime.sleep(3600)\n", "timeout", TEST_F),
        "ignore_signals": ("import signal\nfor s in range(1, 65):\n    try:\n"
                           "        signal.signal(s, signal.SIG_IGN)\n    except Exception:\n"
                           "        pass\nwhile True:\n    pass\n", "timeout", TEST_F),
        "memory_hog_at_once": ("ESCAPED = False\ntry:\n    x = bytearray(4 << 30)\n"
                               "    ESCAPED = True\nexcept MemoryError:\n    pass\n" + escaped,
                               "wrong", TEST_F),
        "memory_hog_growing": ("chunks = []\nESCAPED = False\ntry:\n    for _ in range(400):\n"
                       "        chunks.append(bytearray(8 << 20))\n    ESCAPED = True\n"
                       "except MemoryError:\n    pass\n" + escaped, "wrong|timeout", TEST_F),
        "write_outside": (f"ESCAPED = False\nfor p in {_escape_paths()!r}:\n    try:\n"
                          "        open(p, 'w').write('x')\n"
                          "        ESCAPED = ESCAPED or not p.startswith('/tmp/')\n"
                          "    except OSError:\n        pass\n" + escaped,
                          "wrong", TEST_F),
        "fill_tmp": ("import os\nESCAPED = False\nfor d in ('/tmp', '/dev/shm', '/dev', '/'):\n"
                     "    n = 0\n    try:\n        for i in range(10000):\n"
                     "            with open('%s/fill%d' % (d, i), 'wb') as fh:\n"
                     "                fh.write(b'x' * (8 << 20))\n            n += 8\n"
                     "    except OSError:\n        pass\n    ESCAPED = ESCAPED or n > 200\n"
                     + escaped, "wrong", TEST_F),
        "huge_file": ("ESCAPED = False\nwith open('/tmp/big', 'wb') as fh:\n    for _ in range(64):\n"
                      "        fh.write(b'x' * (1 << 20))\nESCAPED = True\n" + escaped,
                      "wrong", TEST_F),
        "network_interfaces": ("import socket\nESCAPED = any(n != 'lo' for _, n in "
                               "socket.if_nameindex())\n" + escaped, "wrong", TEST_F),
        "network_connect": ("import socket\nESCAPED = False\ntry:\n"
                            f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                            f"    s.sendall(b'{TOKEN}')\n    ESCAPED = True\nexcept OSError:\n"
                            "    pass\n" + escaped, "wrong", TEST_F),
        "read_secrets": ("import os, glob\nfound = [str(os.environ)]\n"
                         "for p in ['/proc/1/environ', '/proc/self/environ', '/etc/shadow',\n"
                         f"          '/etc/passwd', {str(REPO / 'pyproject.toml')!r}]"
                         " + glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ'):\n"
                         "    try:\n        found.append(open(p, 'rb').read().decode('latin1'))\n"
                         "    except OSError:\n        pass\n"
                         f"ESCAPED = any({TOKEN!r} in t for t in found) or "
                         "os.path.exists('/etc/shadow') or "
                         f"os.path.exists({str(REPO)!r})\n"
                         "def f(x):\n    if ESCAPED:\n        return x + 1\n"
                         "    raise ValueError(' '.join(found)[:5000])  # exfiltrate via detail\n",
                         "wrong", TEST_F),
        "kill_host_processes": ("import os, signal\nESCAPED = False\ntry:\n"
                                f"    os.kill({victim}, signal.SIGKILL)\n    ESCAPED = True\n"
                                "except OSError:\n    pass\nfor pid in (os.getppid(), 1, -1):\n"
                                "    try:\n        os.kill(pid, signal.SIGKILL)\n"
                                "    except OSError:\n        pass\n" + escaped,
                                "wrong", TEST_F),
        "huge_output": ("import os, sys\nblob = 'x' * (1 << 20)\nfor _ in range(200):\n"
                        "    print(blob)\n    sys.stderr.write(blob)\n"
                        "for fd in ('/proc/1/fd/1', '/proc/1/fd/2'):\n    try:\n"
                        "        os.write(os.open(fd, os.O_WRONLY), b'y' * (4 << 20))\n"
                        "    except OSError:\n        pass\n", "wrong", TEST_F),
        "exit_0_early": ("import os\nos._exit(0)\n" + GOOD, "wrong", TEST_F),
        "sys_exit_0": ("import sys\nsys.exit(0)\n" + GOOD, "wrong", TEST_F),
        "exit_0_in_test": ("import os\ndef f(x):\n    os._exit(0)\n", "wrong", TEST_F),
        "always_equal": ("class A:\n    def __eq__(self, o):\n        return True\n"
                         "    def __ne__(self, o):\n        return False\n"
                         "    def __bool__(self):\n        return True\n"
                         "    def __abs__(self):\n        return 0\n"
                         "    def __sub__(self, o):\n        return self\n"
                         "def f(x):\n    return A()\n", "wrong",
                         ["assert f(1) == 2", "assert abs(f(1) - 2) < 1e-6", "assert f(1)"]),
        "forged_markers": ("import os, sys\nnonce = ''\nfor p in ('/proc/1/cmdline', "
                           "'/proc/1/environ', '/proc/1/mem'):\n    try:\n"
                           "        nonce += open(p, 'rb').read(4096).decode('latin1')\n"
                           "    except OSError:\n        pass\n"
                           "for line in ['PASS', 'ok', 'result 0 pass', 'done 1', nonce]:\n"
                           "    print(line)\n    os.write(1, (line + '\\n').encode())\n"
                           "sys.stdout.flush()\nos._exit(0)\n", "wrong", TEST_F),
        "daemonise": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                      "    if os.fork() == 0:\n        time.sleep(60)\n"
                      f"        open('/tmp/pwned-{TOKEN}', 'w').write('late')\n"
                      "    os._exit(0)\n", "wrong", TEST_F),
        "segfault_ctypes": ("import ctypes\nctypes.string_at(0)\n" + GOOD, "wrong", TEST_F),
        "thread_bomb": ("import threading, time\nn = 0\ntry:\n    while n < 5000:\n"
                        "        threading.Thread(target=time.sleep, args=(60,), "
                        "daemon=True).start()\n        n += 1\nexcept RuntimeError:\n"
                        "    pass\nESCAPED = n >= 5000\n" + escaped, "wrong", TEST_F),
        "fd_exhaustion": ("import os\nfds = []\ntry:\n    while len(fds) < 100000:\n"
                          "        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
                          "except OSError:\n    pass\nESCAPED = len(fds) > 10000\n" + escaped,
                          "wrong", TEST_F),
        "unbounded_recursion": ("def f(x):\n    return f(x) + 1\n", "wrong", TEST_F),
        "deep_c_recursion": ("import sys\nsys.setrecursionlimit(10**7)\n"
                             "def g(n):\n    return g(n + 1) + 1\ng(0)\n" + GOOD, "wrong|timeout", TEST_F),
        "read_stdin": ("import os, sys\ndata = ''\nfor src in ('stdin', '/proc/1/fd/0'):\n"
                       "    try:\n        fh = sys.stdin if src == 'stdin' else open(src)\n"
                       "        data += fh.read()\n    except (OSError, ValueError):\n"
                       "        pass\nESCAPED = 'assert' in data or 'nonce' in data\n" + escaped,
                       "wrong", TEST_F),
        "spawn_shell": ("import subprocess\nout = subprocess.run(['/bin/sh', '-c', "
                        "'cat /etc/shadow; ls /work /root /home; ps -e; id -u'], "
                        "capture_output=True, text=True).stdout\n"
                        "ESCAPED = 'root:' in out or 'main' in out or len(out.split()) > 40\n"
                        + escaped, "wrong", TEST_F),
        "create_namespaces": ("import ctypes, subprocess\nlibc = ctypes.CDLL(None)\n"
                              "ESCAPED = False\n"
                              "for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000):\n"
                              "    ESCAPED = ESCAPED or libc.unshare(flag) == 0\n"
                              "r = subprocess.run(['unshare', '-r', 'id', '-u'], "
                              "capture_output=True, text=True)\n"
                              "ESCAPED = ESCAPED or r.stdout.strip() == '0'\n" + escaped,
                              "wrong", TEST_F),
        "read_the_tests": ("import gc, os, glob\nfound = None\n"
                           "for o in gc.get_objects():\n"
                           "    if isinstance(o, dict):\n"
                           "        for v in o.values():\n"
                           "            if isinstance(v, str) and 'expected_' in v:\n"
                           "                found = v\n"
                           "for p in glob.glob('/proc/self/fd/*') + glob.glob('/proc/1/fd/*'):\n"
                           "    try:\n        t = open(p).read()\n    except Exception:\n"
                           "        continue\n    if 'expected_' in t:\n        found = t\n"
                           "def f():\n    return found\n", "wrong|timeout",
                           [f"assert f() == 'expected_{TOKEN}'"]),
    }


CASE_NAMES = sorted(_cases({"port": 1, "victim": 1}))


def _live_pool_processes(sandbox: CodeSandbox) -> list[int]:
    """Live processes of any pool uid (one pass over /proc rather than one per uid), except the
    sandboxes started ahead for the next runs (rewards/sandbox/warm.py), whose uids are their own."""
    config, waiting = sandbox.config, sandbox.warm.reserved_uids()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        if (config.uid_base <= uid < config.uid_base + config.uid_count and uid not in waiting
                and "Z" not in fields.get("State", "")):
            found.append(int(name))
    return found


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_program_is_contained(name, sandbox, host):
    program, expected, tests = _cases(host)[name]
    start = time.monotonic()
    with ShmemWatch() as memory:
        result = sandbox.run(program, tests, deadline_s=DEADLINE)
    elapsed = time.monotonic() - start
    memory.assert_bounded(sandbox.config.memory_bytes)  # a hog may hold up to its run's limit
    assert result.status in expected.split("|"), (result.status, result.detail)
    assert result.passed < result.total
    assert elapsed < DEADLINE + SLACK, f"took {elapsed:.2f}s"
    assert TOKEN not in result.detail and TOKEN not in repr(result.extra)
    if os.geteuid() == 0:
        assert result.extra.get("uid_clean") is True
        assert _live_pool_processes(sandbox) == []
    for path in _escape_paths():
        assert not os.path.exists(path), f"{path} was written on the host"
    os.kill(host["victim"], 0)  # the host process the program tried to kill is still alive
    try:
        conn, _ = host["listener"].accept()
        conn.close()
        pytest.fail("the sandbox connected to a listener on the host's loopback")
    except BlockingIOError:
        pass
    after = sandbox.run(GOOD, TEST_F, deadline_s=DEADLINE)
    assert (after.status, after.passed) == ("ok", 1), after.detail


def test_daemon_does_not_outlive_the_run(sandbox, host):
    """A double-forked setsid daemon is gone right after the run, not only at its deadline."""
    program, _, tests = _cases(host)["daemonise"]
    result = sandbox.run(program, tests, deadline_s=DEADLINE)
    assert result.status == "wrong"
    if os.geteuid() == 0:  # checked at once: the run returns only when the uid has no process
        assert pids_of_uid(result.extra["uid"], zombies=False) == []
        assert result.extra["uid_cleanup"] == "pid namespace"  # the harness's own exit
    assert not os.path.exists(f"/tmp/pwned-{TOKEN}")


def test_dare_exit_code_zero_is_not_a_pass(sandbox):
    """DARE counted exit status 0 as a pass; here only the harness's nonce lines count."""
    for program in ("import sys\nsys.exit(0)\n", "raise SystemExit(0)\n", "import os\nos._exit(0)\n"):
        result = sandbox.run(program, TEST_F, deadline_s=DEADLINE)
        assert result.status == "wrong" and result.passed == 0, (program, result)


def test_dare_host_environment_is_not_copied(sandbox, host):
    """DARE copied the host environment into the child; ours sees PATH, HOME, LANG (and bwrap's PWD) only."""
    program = ("import os\nENV = dict(os.environ)\n"
               "def f(x):\n    return sorted(ENV)\n")
    result = sandbox.run(program, ["assert f(1) == ['HOME', 'LANG', 'PATH', 'PWD']"],
                         deadline_s=DEADLINE)
    assert result.status == "ok", result.detail
    leak = sandbox.run(f"import os\ndef f(x):\n    return x + 1 if os.environ.get("
                       f"'BGPO_TEST_SECRET') == {TOKEN!r} else 0\n", TEST_F, deadline_s=DEADLINE)
    assert leak.status == "wrong"


def test_concurrent_hostile_and_correct_runs_do_not_interfere(sandbox, host):
    """A fork bomb in one thread must not starve a correct run in another (fresh uid each)."""
    from concurrent.futures import ThreadPoolExecutor

    bomb = _cases(host)["fork_bomb_os"][0]
    with ThreadPoolExecutor(2) as ex:
        bad = ex.submit(sandbox.run, bomb, TEST_F, deadline_s=DEADLINE)
        time.sleep(0.3)
        good = ex.submit(sandbox.run, GOOD, TEST_F, deadline_s=DEADLINE)
        assert good.result().status == "ok", good.result().detail
        assert bad.result().status == "timeout"


def test_signal_to_verifier_is_not_possible(sandbox):
    """The program cannot signal the verifier (our pid) even though it knows it."""
    program = (f"import os, signal\ntry:\n    os.kill({os.getpid()}, signal.SIGTERM)\n"
               "    OK = True\nexcept OSError:\n    OK = False\n"
               "def f(x):\n    return x + 1 if OK else 0\n")
    old = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("verifier got SIGTERM"))
    try:
        assert sandbox.run(program, TEST_F, deadline_s=DEADLINE).status == "wrong"
    finally:
        signal.signal(signal.SIGTERM, old)
