"""Build the command lines that start the code harness: prlimit -> bwrap -> python -I -S harness.

This module only builds argv lists and stages files (the harness, compiled once per process by
the sandbox's interpreter, and the directory the private /tmp is mounted on); it starts nothing
(supervisor.py and warm.py do).

The sandbox recipe (rewards.md section 3): prlimit caps address space, processes, file size, open
files, CPU time and core dumps; bwrap unshares every namespace (user, pid, net, ipc, uts, cgroup,
mount), drops all capabilities, forbids nested user namespaces, starts a new session (no TIOCSTI on
our terminal), runs the harness as pid 1 (so bwrap's helper never exposes the host environment and
the whole sandbox dies when the harness exits), with a cleared environment, read-only /usr, a
size-capped tmpfs /tmp (the only writable place) and nothing else from the host: no /etc, no /home, no project directory.
With the memory cgroup (memory.py, root mode) the process that execs prlimit has already joined
the run's cgroup and made the run's IPC namespace (with limits) and a mount namespace holding
an inode-capped tmpfs: bwrap is then told to unshare every namespace but IPC, and binds that
tmpfs as /tmp instead of making its own (`tmp_bind`).

Which Python runs inside: by default the system interpreter /usr/bin/python3. It lives under /usr,
which is bound anyway, so it adds nothing to what the sandbox sees, and it is readable by the
unprivileged pool uid. A venv's interpreter is a poor choice: its base (pyenv, conda) usually sits
in a home directory the pool uid cannot even traverse (/root is 0700), and binding it would expose
the host's site-packages. Where /usr/bin/python3 is missing, the base interpreter of the running
Python is used and its installation prefix (sys.base_prefix) is bound read-only at the same path.
`BGPO_SANDBOX_PYTHON` overrides the choice (its prefix is bound the same way if outside /usr).
The harness needs only the standard library; `-I -S` keeps the environment, the user's site and
site-packages out (HumanEval and MBPP need no third-party package).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

HARNESS_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "code_harness.py")
HARNESS_DIR_INSIDE = "/sandbox"  # where the harness appears inside the sandbox
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"  # the whole environment inside is PATH, HOME, LANG


@dataclass(frozen=True)
class SandboxConfig:
    """Resource limits and identities of a sandboxed run; defaults follow rewards.md section 3."""

    address_space_bytes: int = 1 << 30  # RLIMIT_AS: memory hogs fail with MemoryError
    nproc: int = 64  # RLIMIT_NPROC (processes + threads of the sandbox uid): fork/thread bombs
    fsize_bytes: int = 16 << 20  # RLIMIT_FSIZE: one huge file gets SIGXFSZ/EFBIG
    nofile: int = 256  # RLIMIT_NOFILE: fd exhaustion stays inside the sandbox
    tmpfs_bytes: int = 64 << 20  # size of the private /tmp (filling it gives ENOSPC)
    # The memory cgroup (rewards/sandbox/memory.py; root mode). memory_bytes bounds a whole RUN:
    # all its processes and threads together, anonymous memory, page cache, tmpfs/memfd/SysV shm
    # pages and kernel memory (inodes, page tables, pipes). Past it the run is killed, scores 0.
    memory_bytes: int = 1 << 30
    tmp_inodes: int = 8192  # nr_inodes of /tmp: an empty-file flood gets ENOSPC
    shm_bytes: int = 64 << 20  # kernel.shmmax/shmall of the run's IPC namespace (SysV shm)
    cgroup_root: str | None = None  # where bgpo-sandbox/ goes; None: our own memory cgroup
    # Opt-out (also BGPO_SANDBOX_ALLOW_NO_MEMORY_CGROUP=1): where no memory cgroup is writable,
    # run bounded by the rlimits alone instead of failing closed (sandbox_unavailable).
    allow_no_memory_cgroup: bool = False
    uid_base: int = 200_000  # first uid of the pool used when running as root
    uid_count: int = 1_000  # pool size; uids rotate so a uid is reused as late as possible
    stdout_cap: int = 1 << 20  # bytes of harness stdout kept; more is treated as an attack
    stderr_cap: int = 64 << 10  # bytes of stderr kept for diagnostics (the rest is drained)
    python: str | None = None  # interpreter inside the sandbox; None: see module docstring
    prestart: int = 4  # most sandboxes started ahead of their run (warm.py); 0: none


def pick_interpreter(config: SandboxConfig) -> tuple[str, list[str]]:
    """(interpreter path, host prefixes to bind read-only) for the sandbox's Python."""
    choice = config.python or os.environ.get("BGPO_SANDBOX_PYTHON")
    if not choice:
        if os.access("/usr/bin/python3", os.X_OK):
            return "/usr/bin/python3", []
        choice = os.path.join(sys.base_prefix, "bin", "python3")
        if not os.access(choice, os.X_OK):
            choice = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    real = os.path.realpath(choice)
    if real.startswith("/usr/"):
        return real, []
    prefix = os.path.dirname(os.path.dirname(real))  # <prefix>/bin/python3.x -> <prefix>
    if prefix in ("/", ""):
        raise ValueError(f"refusing to bind {prefix!r} for interpreter {real}")
    return real, [prefix]


def bwrap_version() -> tuple[int, ...]:
    """bubblewrap's version, (0,) if it cannot be read."""
    try:
        out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}).stdout
        return tuple(int(x) for x in out.split()[-1].split(".")[:3])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return (0,)


_stage_lock = threading.Lock()
_stage_dir: str | None = None
_staged: dict[str, str] = {}  # interpreter -> the harness file it runs

# Run once by the sandbox's interpreter at staging time: its own bytecode format, and a hash-based
# .pyc that it never checks against a source file (the sandbox has none).
_COMPILE = ("import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], "
            "doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)")


def staged_harness(python: str | None = None) -> str:
    """A private copy of the harness that any uid can read but only we can change.

    The pool uid must be able to open the file bwrap binds, and the project directory may not be
    traversable by it; a root-owned 0755 directory in the host's /tmp always is. With `python`,
    the copy is that interpreter's compiled .pyc: a script given as source is compiled on every
    start (about 3 ms of each run), bytecode is not. Where compiling fails the source is used.
    """
    global _stage_dir
    with _stage_lock:
        key = python or ""
        if key in _staged and os.path.exists(_staged[key]):
            return _staged[key]
        if _stage_dir is None or not os.path.isdir(_stage_dir):
            _stage_dir = tempfile.mkdtemp(prefix="bgpo-harness-")
            os.chmod(_stage_dir, 0o755)
            atexit.register(shutil.rmtree, _stage_dir, True)
        source = os.path.join(_stage_dir, "code_harness.py")
        if not os.path.exists(source):
            shutil.copyfile(HARNESS_SOURCE, source)
            os.chmod(source, 0o444)
        path = source
        if python and os.access(python, os.X_OK):  # a missing one fails the probe later
            compiled = os.path.join(_stage_dir, f"code_harness.{len(_staged)}.pyc")
            try:
                done = subprocess.run([python, "-I", "-S", "-c", _COMPILE, source, compiled],
                                      capture_output=True, text=True, timeout=60,
                                      env={"PATH": SANDBOX_PATH})
                why = done.stderr.strip()[-200:] if done.returncode else ""
            except (OSError, subprocess.SubprocessError) as e:
                why = f"{type(e).__name__}: {e}"
            if not why and os.path.exists(compiled):
                os.chmod(compiled, 0o444)
                path = compiled
            else:
                log.warning("could not precompile the harness with %s (%s); running its source",
                            python, why)
        _staged[key] = path
        return path


def tmp_mountpoint() -> str:
    """A root-owned, empty directory that each run's private tmpfs is mounted on (memory.py).

    The mount exists only in the run's own mount namespace, so one directory serves every run at
    once; on the host it stays empty. It sits in the staging directory, which any uid can
    traverse (bwrap binds it as the pool uid).
    """
    staged_harness()
    path = os.path.join(_stage_dir, "tmp")
    with _stage_lock:
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
    return path


def prlimit_args(config: SandboxConfig, *, cpu_seconds: float, nproc: int) -> list[str]:
    """The prlimit prefix; limits are inherited by bwrap and everything it starts."""
    cpu = max(1, math.ceil(cpu_seconds))
    return ["prlimit", f"--as={config.address_space_bytes}", f"--nproc={nproc}",
            f"--fsize={config.fsize_bytes}", f"--nofile={config.nofile}", f"--cpu={cpu}",
            "--core=0", "--"]


def bwrap_args(config: SandboxConfig, *, uid: int, harness: str, python: str,
               binds: list[str], tmp_bind: str | None = None) -> list[str]:
    """bwrap with every namespace unshared and only /usr, the harness and a tmpfs visible.

    tmp_bind: the caller has made the IPC namespace and mounted this tmpfs (memory.py): keep the
    IPC namespace and bind the tmpfs as /tmp.
    """
    inside = f"{HARNESS_DIR_INSIDE}/code_harness{os.path.splitext(harness)[1]}"  # .pyc or .py
    if tmp_bind is None:
        unshare = ["--unshare-all"]
        tmp = ["--size", str(config.tmpfs_bytes), "--tmpfs", "/tmp"]
    else:
        unshare = ["--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        tmp = ["--bind", tmp_bind, "/tmp"]
    args = ["bwrap", *unshare, "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--as-pid-1", "--unshare-user", "--uid", str(uid), "--gid", str(uid),
            "--disable-userns",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", "--dev", "/dev",
            *tmp, "--ro-bind", harness, inside]
    for prefix in binds:
        args += ["--ro-bind", prefix, prefix]
    # bwrap's root and /dev are tmpfs mounts with no size cap: left writable, files there would
    # eat host memory. Device nodes stay usable on a read-only /dev.
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    args += ["--chdir", "/tmp", "--clearenv", "--setenv", "PATH", SANDBOX_PATH,
             "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
             python, "-I", "-S", inside]
    return args


def sandbox_argv(config: SandboxConfig, *, uid: int, cpu_seconds: float, nproc: int,
                 tmp_bind: str | None = None) -> list[str]:
    """Full argv of one sandboxed harness run (uid: the uid seen inside the sandbox; tmp_bind:
    see bwrap_args)."""
    python, binds = pick_interpreter(config)
    return prlimit_args(config, cpu_seconds=cpu_seconds, nproc=nproc) + bwrap_args(
        config, uid=uid, harness=staged_harness(python), python=python, binds=binds,
        tmp_bind=tmp_bind)


def unsandboxed_argv(config: SandboxConfig, *, cpu_seconds: float, nproc: int) -> list[str]:
    """rlimits + isolated-mode Python only: used solely with allow_unsandboxed=True.

    The interpreter must be runnable by the pool uid, so the system one comes before ours.
    """
    try:
        python = pick_interpreter(config)[0]
    except ValueError:
        python = ""
    if not os.access(python, os.X_OK):
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    return prlimit_args(config, cpu_seconds=cpu_seconds, nproc=nproc) + [
        python, "-I", "-S", staged_harness(python)]
