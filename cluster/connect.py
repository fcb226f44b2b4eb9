"""Connecting to Ray: the cluster at RAY_ADDRESS (`ray job submit` sets it), or a private local one.

Only the private local cluster is forced onto loopback (platform.md: Ray would otherwise listen on
the machine's routable address); on a real cluster every node keeps its own address, and the
transports bind to the interface that holds it (cluster/network.py).
"""

from __future__ import annotations

import os

import ray

from cluster.config import RunConfig
from cluster.groups import namespace_of


def reserved_cpus(config: RunConfig) -> float:
    return (
        config.learner.num_workers * config.learner.num_cpus
        + config.rollout.num_workers * config.rollout.num_cpus
        + config.rewards.num_workers * config.rewards.num_cpus
    )


def connect(config: RunConfig) -> None:
    """Join the cluster at RAY_ADDRESS, or start a private local one sized for the run."""
    namespace = namespace_of(config.run_name)
    if ray.is_initialized():  # a caller (tests, notebooks) already connected
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=namespace, log_to_driver=True)
        return
    # A throwaway local cluster on loopback: no dashboard, token auth off unless the user set it.
    # The raylet and workers read the loopback switch when they import Ray, after this; the driver
    # is pinned by _node_ip_address. On a real cluster it must stay unset (Ray would report 127.0.0.1).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Idle OpenMP threads sleep instead of spinning: several actors share a few cores here, and
    # spinning threads of one actor starve the others (the actors inherit this environment).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logical = max(os.cpu_count() or 1, int(reserved_cpus(config) + 0.999) + 1)
    ray.init(
        address="local",
        num_cpus=logical,
        include_dashboard=False,
        namespace=namespace,
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
    )
