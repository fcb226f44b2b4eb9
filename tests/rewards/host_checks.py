"""The host's memory around a hostile run: Shmem (/proc/meminfo) sampled while it goes on.

Shared by the hostile-input suites (issue 16, item 6): every class asserts the score, the time,
that the host's Shmem did not grow past a bound during the run and went back after it, and that
a correct answer scores 1.0 afterwards. Shmem counts tmpfs, memfd and SysV pages, which are what
a run could leave behind outside its own processes.
"""

from __future__ import annotations

import threading
import time

MiB = 1 << 20
SLACK = 96 * MiB  # other programs on a shared machine move Shmem a little too


def shmem() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Shmem line in /proc/meminfo")


class ShmemWatch:
    """Samples the host's Shmem every 2 ms while a run goes on."""

    def __init__(self) -> None:
        self.baseline = self.peak = shmem()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, shmem())
            time.sleep(0.002)

    def __enter__(self) -> ShmemWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def back_to_baseline(self, timeout_s: float = 5.0) -> bool:
        """Freed memory leaves asynchronously (the IPC namespace is freed by a kernel worker)."""
        end = time.monotonic() + timeout_s
        while shmem() > self.baseline + SLACK:
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def assert_bounded(self, limit: int = 0) -> None:
        """Shmem rose by at most `limit` (+ noise) during the run and went back after it."""
        grew = self.peak - self.baseline
        assert grew <= limit + SLACK, f"host Shmem rose by {grew >> 20} MiB"
        assert self.back_to_baseline(), f"host Shmem stayed {(shmem() - self.baseline) >> 20} MiB up"
