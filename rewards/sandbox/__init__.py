"""The code sandbox: run untrusted Python against tests, fail closed.

Public API:
    sandbox_available() -> bool
    sandbox_availability() -> (bool, reason)
    run_tests(code, tests, *, deadline_s, allow_unsandboxed=False, guard=()) -> CodeRunResult
    CodeSandbox(config) for a non-default configuration; SandboxConfig for the limits.

Modules: launcher (prlimit/bwrap argv, interpreter choice, precompiled harness), supervisor
(deadline, output caps, process-group kill), uid_pool (fresh uid per run, sweep), warm (the next
sandbox started while the current run goes on), runner (nonce protocol, verdicts, modes, when a
uid needs no sweep), strict_rewrite (host-side AST rewrite of test code). The harness that runs
inside is rewards/code_harness.py.

What the sandbox protects against (each has a test in tests/rewards/test_hostile_code.py): fork and
thread bombs, infinite loops, sleeps, memory hogs, writes outside the sandbox, filling /tmp, huge
files, network access, reading host secrets (environment, other processes, /etc/shadow, the
project), signalling host processes, huge output, fake exit codes and pass markers, AlwaysEqual
objects, daemons, segfaults, fd exhaustion, recursion, reading stdin, shells and namespaces.
Reward hacks on the verdict (tests/rewards/test_verdict_isolation.py): the tests run in the
harness's trusted process and the candidate only answers calls as plain data, so patching the
harness module, the standard-library modules the tests import, or builtins, forging report lines
or frames on any descriptor, and reading expected values from frames, gc or inspect change only
the candidate's own return values (rewards/code_harness.py).
What it does NOT protect against: kernel exploits (it shares the host kernel; no seccomp filter
is installed), CPU/memory contention with the host beyond the rlimits (no cgroups: a run may use
a full core and up to 1 GiB of address space per process, times the number of processes), and
what the candidate can learn from the arguments it is called with (it must see them to answer;
it never sees the tests' source or expected values). Tests that need more than plain data from
the candidate (attributes or methods of its objects, callbacks into test-defined functions) fail
rather than pass: see the fallbacks in rewards/code_harness.py. Not root: see
rewards/sandbox/runner.py for what is weaker.
"""

from __future__ import annotations

from rewards.sandbox.launcher import SandboxConfig
from rewards.sandbox.runner import CodeRunResult, CodeSandbox, default_sandbox

__all__ = ["CodeRunResult", "CodeSandbox", "SandboxConfig", "run_tests", "sandbox_availability",
           "sandbox_available"]


def sandbox_available() -> bool:
    """True if sandboxed code runs work on this host (probed once per process)."""
    return default_sandbox().available()


def sandbox_availability() -> tuple[bool, str]:
    """(works, reason): the mode ("root uid pool" / "user") or why the probe failed."""
    return default_sandbox().availability()


def run_tests(code: str, tests: list[str], *, deadline_s: float, allow_unsandboxed: bool = False,
              guard: tuple[str, ...] = ()) -> CodeRunResult:
    """Run `code` then each test source in the default sandbox; never raises.

    guard: names of the functions under test, whose return values must be builtin types.
    """
    return default_sandbox().run(code, tests, deadline_s=deadline_s,
                                 allow_unsandboxed=allow_unsandboxed, guard=guard)
