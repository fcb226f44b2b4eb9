"""Shared fixtures for the cluster tests: a private local Ray instance and a tiny run config."""

import os

import pytest

# Keep Ray on loopback and token auth off for these throwaway clusters (platform.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

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


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_run(tmp_path):
    """A function giving a RunConfig for a few-second run in tmp_path, with extra overrides."""
    from cluster.config import load_config

    def make(name: str, *overrides: str):
        return load_config(None, [*TINY_RUN, f"run_name={name}", f"output_dir={tmp_path}", *overrides])

    return make

