"""Run candidate code against tests in the sandbox and read the verdict from the harness.

The verdict comes only from nonce-prefixed lines of the trusted harness (rewards/code_harness.py),
whose trusted process runs the tests and calls the candidate's code in another process:
all tests pass only if there is a `pass` line for every test AND the final `done <n>` line.
The exit status and every other byte of output are ignored, so `sys.exit(0)`, `os._exit(0)` and
printed "PASS" markers earn nothing (DARE counted exit status 0 as a pass).

Modes, chosen once per process:
- root: each run leases a fresh uid from the pool, the run is started as that uid (so
  RLIMIT_NPROC bites), and the uid has no process left when the run returns: either the
  sandbox's pid namespace provably emptied (the harness exited by itself; see _run_sandboxed),
  or the uid is swept (all its processes SIGKILLed until none is left).
- not root (a laptop): bwrap as the invoking user. Weaker: RLIMIT_NPROC counts all of the user's
  processes (we set it to their current count + the budget), and there is no uid sweep: cleanup
  relies on the pid namespace dying with the harness (pid 1) and on --die-with-parent.
- unsandboxed (only if no sandbox works AND the caller passed allow_unsandboxed=True): rlimits,
  a cleared environment and the deadline only; the code can read and write whatever the verifier
  user can. Results carry extra["sandboxed"] = False.
Fail closed: without a sandbox and without the opt-in, the status is `sandbox_unavailable`.

Memory (memory.py): in root mode each run gets its own memory cgroup (SandboxConfig.memory_bytes
for the whole run), IPC namespace limits and an inode-capped /tmp; a run that passes the limit
is killed and scores 0 (status `wrong`, detail "memory limit: ..."). Where no memory cgroup is
writable (and always when not root) the probe fails, so runs are `sandbox_unavailable`, unless
SandboxConfig.allow_no_memory_cgroup or BGPO_SANDBOX_ALLOW_NO_MEMORY_CGROUP=1 accepts the
rlimits-only bound. The probe's reason names the memory mode.

Sandboxed runs take a sandbox started ahead of time (warm.py; SandboxConfig.prestart = 0 turns
that off): the deadline and CodeRunResult.seconds count from when the harness says it waits
for its job (code_harness.STARTED_LINE), so a sandbox started cold is not charged its start-up.
"""

from __future__ import annotations

import logging
import marshal
import math
import os
import secrets
import shutil
import subprocess
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field

from rewards.code_harness import STARTED_LINE
from rewards.sandbox.launcher import (
    SandboxConfig,
    bwrap_version,
    sandbox_argv,
    tmp_mountpoint,
    unsandboxed_argv,
)
from rewards.sandbox.memory import OPT_OUT_ENV, Confinement, MemoryCgroups, confine, opted_out
from rewards.sandbox.strict_rewrite import strict_test_source
from rewards.sandbox.supervisor import ProcessOutcome, run_process, spawn_async, supervise
from rewards.sandbox.uid_pool import UidLease, UidPool, pids_of_uid
from rewards.sandbox.warm import WarmPool

log = logging.getLogger(__name__)

_CPU_SLACK_S = 1.0  # RLIMIT_CPU is a backstop behind the wall clock, never the first to fire
_REPROBE_S = 60.0  # how long a failed availability probe is believed


@dataclass
class CodeRunResult:
    """Outcome of running one program against its tests."""

    status: str  # ok | wrong | timeout | error | sandbox_unavailable (RewardResult statuses)
    passed: int  # tests the harness reported as passed
    total: int  # tests given
    detail: str = ""  # first failure, or why the run could not be judged
    seconds: float = 0.0  # wall time of the sandboxed run
    sandboxed: bool = True  # False only for allow_unsandboxed runs
    extra: dict = field(default_factory=dict)  # uid, return code, swept processes ...


class CodeSandbox:
    """Runs harness jobs; thread-safe, one instance per process is enough (see default_sandbox)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.is_root = os.geteuid() == 0
        self.pool = UidPool(self.config.uid_base, self.config.uid_count) if self.is_root else None
        self.cgroups: MemoryCgroups | None = None  # set by the probe when memory is bounded
        self.warm = WarmPool(self.config.prestart, self._start, self._release)
        # The pool refers back to this sandbox, so this runs at interpreter exit at the latest.
        weakref.finalize(self, self.warm.close)
        self._probe_lock = threading.Lock()
        self._probe: tuple[bool, str] | None = None
        self._probed_at = 0.0

    # ----- availability -------------------------------------------------------------------
    def availability(self) -> tuple[bool, str]:
        """(works, reason): a trivial job must pass inside the real sandbox.

        Success is cached for the process; a failure only for _REPROBE_S, so a probe that timed
        out on an overloaded host does not zero every code reward of a long run.
        """
        with self._probe_lock:
            now = time.monotonic()
            if self._probe is None or (not self._probe[0] and now - self._probed_at > _REPROBE_S):
                self._probe, self._probed_at = self._run_probe(), now
                if not self._probe[0]:
                    log.error("code sandbox unavailable: %s", self._probe[1])
            return self._probe

    def available(self) -> bool:
        return self.availability()[0]

    def _run_probe(self) -> tuple[bool, str]:
        missing = [b for b in ("bwrap", "prlimit") if shutil.which(b) is None]
        if missing:
            return False, f"missing executables: {', '.join(missing)}"
        version = bwrap_version()
        if version < (0, 8):  # --disable-userns and --size (capped /tmp) need bubblewrap 0.8
            return False, f"bubblewrap >= 0.8 needed, found {'.'.join(map(str, version))}"
        ok, memory = self._probe_memory()
        if not ok:
            return False, memory
        try:
            job = {"code": "x = 41 + 1\n", "tests": [strict_test_source("assert x == 42")]}
            res = self._run_sandboxed(job, 10.0, prestart=False)
        except Exception as e:  # a probe failure is a reason, not a crash
            return False, f"probe failed to start: {type(e).__name__}: {e}"
        if res.status != "ok":
            return False, f"probe job did not pass ({res.status}): {res.detail}"
        return True, "mode=" + ("root uid pool" if self.is_root else "user") + "; " + memory

    def _probe_memory(self) -> tuple[bool, str]:
        """(usable, the memory mode or why none is usable); sets self.cgroups when bounded."""
        cfg = self.config
        try:
            if not self.is_root:
                raise OSError("not root: cannot make the per-run cgroups and namespaces")
            cgroups = MemoryCgroups(cfg.memory_bytes, cfg.cgroup_root)
            cgroups.check()
        except OSError as e:
            if opted_out(cfg.allow_no_memory_cgroup):
                self.cgroups = None
                return True, (f"memory=rlimits only ({OPT_OUT_ENV} / allow_no_memory_cgroup "
                              f"set; no memory cgroup: {e})")
            return False, (f"memory cgroup unavailable: {e}; code runs fail closed (set "
                           f"{OPT_OUT_ENV}=1 or SandboxConfig(allow_no_memory_cgroup=True) to run "
                           f"bounded by rlimits only)")
        self.cgroups = cgroups
        return True, (f"memory=cgroup v1 {cfg.memory_bytes >> 20} MiB per run at "
                      f"{cgroups.parent}; /tmp {cfg.tmpfs_bytes >> 20} MiB, {cfg.tmp_inodes} "
                      f"inodes; SysV shm {cfg.shm_bytes >> 20} MiB")

    # ----- running --------------------------------------------------------------------------
    def run(self, code: str, tests: list[str], *, deadline_s: float,
            allow_unsandboxed: bool = False, guard: tuple[str, ...] = ()) -> CodeRunResult:
        """Run `code`, then each test source; never raises on what the code does.

        `guard`: names of the functions under test; the harness requires their return values to
        be builtin types (see rewards/code_harness.py).
        """
        ok, reason = self.availability()
        try:
            job = {"code": code, "tests": [strict_test_source(t) for t in tests],
                   "guard": list(guard)}
            if ok:
                return self._run_sandboxed(job, deadline_s)
            if not allow_unsandboxed:
                return CodeRunResult("sandbox_unavailable", 0, len(tests), detail=reason)
            return self._run_unsandboxed(job, deadline_s, reason)
        except Exception as e:  # a verifier-side failure: say so, score 0
            log.exception("code run failed on the verifier side")
            return CodeRunResult("error", 0, len(tests), detail=f"{type(e).__name__}: {e}")

    def _run_sandboxed(self, job: dict, deadline_s: float, *, prestart: bool = True) -> CodeRunResult:
        started = self.warm.take(math.ceil(deadline_s + _CPU_SLACK_S), refill=prestart)
        lease, emptied = started.lease, False
        cgroup = getattr(lease, "cgroup", None)
        try:
            result = self._execute(started.proc, job, deadline_s,
                                   extra={} if lease is None else {"uid": lease.uid},
                                   watch=None if cgroup is None else cgroup.oom_killed)
            if cgroup is not None:  # past the limit: killed, and scored 0 whatever it printed
                result.extra["memory_peak_bytes"] = cgroup.peak()
                over = cgroup.over_limit()
                if over:
                    result.status, result.passed, result.detail = "wrong", 0, over
                    result.extra["memory_limit"] = True
            # bwrap (--as-pid-1) exits 0 only after reaping the harness, pid 1 of the sandbox's
            # pid namespace, which exited 0. The kernel kills every other process of that
            # namespace and waits for all of them to be gone before pid 1 can be reaped, and no
            # process can leave a pid namespace: so the uid has no process left, and the /proc
            # scan (about 2 ms here, more on a host with many processes) is only needed when we
            # killed bwrap (deadline, output flood) or it failed.
            emptied = result.extra["returncode"] == 0
        finally:
            clean = self._release(lease, emptied)
        if lease is not None:
            result.extra.update(uid_clean=clean, uid_cleanup="pid namespace" if emptied else "sweep")
        return result

    def _start(self, cpu_seconds: int) -> tuple[Future, UidLease | None]:
        """Spawn one sandbox (on the spawner thread) that waits for its job on stdin."""
        cfg = self.config
        if self.pool is None:  # not root: the budget sits on top of the user's own processes
            uid = os.getuid()
            nproc = len(pids_of_uid(uid)) + cfg.nproc
            return spawn_async(sandbox_argv(cfg, uid=uid, cpu_seconds=cpu_seconds,
                                            nproc=nproc)), None
        lease = self.pool.acquire()  # sweeps a uid that a crashed verifier left dirty
        try:
            if self.cgroups is None:  # rlimits only (opted out, see _probe_memory)
                argv = sandbox_argv(cfg, uid=lease.uid, cpu_seconds=cpu_seconds, nproc=cfg.nproc)
                return spawn_async(argv, user=lease.uid), lease
            # Forked as root: joins the run's cgroup, makes its IPC and mount namespaces, then
            # becomes the pool uid, all before prlimit, bwrap or the harness start (memory.py).
            lease.cgroup = self.cgroups.create()
            mnt = tmp_mountpoint()
            argv = sandbox_argv(cfg, uid=lease.uid, cpu_seconds=cpu_seconds, nproc=cfg.nproc,
                                tmp_bind=mnt)
            preexec = confine(Confinement(
                join=lease.cgroup.join, uid=lease.uid, tmp_dir=mnt, tmp_bytes=cfg.tmpfs_bytes,
                tmp_inodes=cfg.tmp_inodes, shm_bytes=cfg.shm_bytes))
            return spawn_async(argv, preexec=preexec), lease
        except BaseException:
            self._release(lease, False)
            raise

    def _release(self, lease: UidLease | None, known_clean: bool) -> bool:
        """Give the uid back (swept unless known_clean) and remove the run's cgroup; True if the
        uid has no process left."""
        if lease is None:
            return True
        clean = self.pool.release(lease, known_clean=known_clean)
        cgroup, lease.cgroup = lease.cgroup, None
        if cgroup is not None:  # after the sweep: the run's processes are gone
            self.cgroups.release(cgroup)  # set once by the probe, never replaced after success
        return clean

    def _run_unsandboxed(self, job: dict, deadline_s: float, reason: str) -> CodeRunResult:
        cfg = self.config
        user = None
        lease = self.pool.acquire() if self.pool is not None else None
        if lease is not None:
            user = lease.uid
        nproc = cfg.nproc if user is not None else len(pids_of_uid(os.getuid())) + cfg.nproc
        argv = unsandboxed_argv(cfg, cpu_seconds=deadline_s + _CPU_SLACK_S, nproc=nproc)
        nonce = secrets.token_hex(16)
        try:
            outcome = run_process(argv, marshal.dumps(dict(job, nonce=nonce), 4),
                                  deadline_s=deadline_s, user=user, started=STARTED_LINE,
                                  stdout_cap=cfg.stdout_cap, stderr_cap=cfg.stderr_cap)
            result = self._judge(outcome, nonce, job, {"unsandboxed_reason": reason})
        finally:
            if lease is not None:
                self.pool.release(lease)
        result.sandboxed = False
        result.extra["sandboxed"] = False
        return result

    def _execute(self, proc: subprocess.Popen, job: dict, deadline_s: float, *,
                 extra: dict, watch=None) -> CodeRunResult:
        nonce = secrets.token_hex(16)  # 128 bits: never guessable, fresh for every run
        data = marshal.dumps(dict(job, nonce=nonce), 4)  # format 4: readable by Python >= 3.4
        outcome = supervise(proc, data, deadline_s=deadline_s, stdout_cap=self.config.stdout_cap,
                            stderr_cap=self.config.stderr_cap, watch=watch, started=STARTED_LINE)
        return self._judge(outcome, nonce, job, extra)

    @staticmethod
    def _judge(outcome: ProcessOutcome, nonce: str, job: dict, extra: dict) -> CodeRunResult:
        result = judge(outcome, nonce, len(job["tests"]))
        result.extra.update(extra, returncode=outcome.returncode)
        return result


def judge(outcome: ProcessOutcome, nonce: str, n_tests: int) -> CodeRunResult:
    """Turn the harness's nonce lines into a verdict; everything else in the output is ignored."""
    ready, done = False, False
    verdicts: dict[int, tuple[bool, str]] = {}
    prefix = nonce + " "
    for raw in outcome.stdout.decode("utf-8", "replace").splitlines():
        if not raw.startswith(prefix):
            continue
        parts = raw[len(prefix):].split(" ", 3)
        if parts[0] == "ready":
            ready = True
        elif parts[0] == "done" and len(parts) == 2 and parts[1] == str(n_tests):
            done = True
        elif parts[0] == "result" and len(parts) >= 3 and parts[1].isdigit():
            reason = _decode_reason(parts[3]) if len(parts) == 4 else ""
            verdicts.setdefault(int(parts[1]), (parts[2] == "pass", reason))
    passed = sum(1 for i in range(n_tests) if verdicts.get(i, (False, ""))[0])
    base = dict(passed=passed, total=n_tests, seconds=outcome.seconds)
    if outcome.timed_out:
        return CodeRunResult("timeout", detail="killed at the wall-clock deadline", **base)
    if outcome.overflow:
        return CodeRunResult("wrong", detail="output over the cap; killed", **base)
    if not ready:
        tail = outcome.stderr.decode("utf-8", "replace").strip()[-300:]
        return CodeRunResult("error", detail=f"harness did not start: {tail}", **base)
    if done and passed == n_tests:
        return CodeRunResult("ok", **base)
    failed = [i for i in range(n_tests) if not verdicts.get(i, (False, ""))[0]]
    why = verdicts.get(failed[0], (False, "no result line"))[1] if failed else "no final line"
    first = f"test {failed[0]}: {why}" if failed else why
    return CodeRunResult("wrong", detail=first, **base)


def _decode_reason(text: str) -> str:
    """Reasons travel hex-encoded so they cannot break the line format."""
    try:
        return bytes.fromhex(text).decode("utf-8", "replace")[:300]
    except ValueError:
        return text[:300]


_default: CodeSandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> CodeSandbox:
    """The process-wide sandbox (one uid pool, one probe)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = CodeSandbox()
        return _default
