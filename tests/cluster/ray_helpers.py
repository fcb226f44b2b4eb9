"""Helpers for tests that start Ray clusters of their own."""

import os

# A few-second run of the tiny model: the overrides every cluster test starts from.
TINY_RUN = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "task.num_train=64",
    "task.num_test=8",
    "warmup.steps=3",
    "warmup.batch_size=16",
    "rollout.num_workers=2",
    "rollout.group_size=4",
    "rollout.num_cpus=0.5",
    "learner.num_cpus=0.5",
    "learner.num_threads=1",  # several runs share 2 cores in the tests: no intra-op threading
    "learner.n_t=2",
    "learner.micro_batch_size=8",
    "trainer.prompts_per_step=4",
    "trainer.total_steps=2",
    "trainer.eval_limit=8",
]


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
