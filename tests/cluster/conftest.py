"""Shared fixtures for the cluster tests: a private local Ray instance and a tiny run config."""

import os

import pytest

# Keep Ray on loopback and token auth off for these throwaway clusters (platform.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray_helpers import TINY_RUN  # noqa: E402  (shared with test modules that import it)


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

