"""Helpers for tests that start Ray clusters of their own."""

import os


def kill_processes_mentioning(text: str, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, every process whose command line or environment contains `text` (a
    Ray cluster's own temp dir), and wait until they are gone. Unlike `ray stop`, this leaves any other Ray
    instance on the machine alone."""
    import signal
    import time
    from pathlib import Path

    def matching() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                # Ray renames its worker processes (ray::LearnerActor...), so their command line
                # no longer shows the temp dir; their environment (inherited RAY_TMPDIR) still does.
                seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            except OSError:
                continue
            if text.encode() in seen:
                found.append(int(entry.name))
        return found

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in matching():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while matching() and time.monotonic() < deadline:
            time.sleep(0.2)
