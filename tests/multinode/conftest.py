"""Fixtures for the multinode tests: Ray hosts in network namespaces (tests/multinode/netcluster.py).

`netcluster` is session-scoped and reusable by end-to-end tests: 3 hosts with Ray (head on host 0),
an object with the hosts' addresses, the dashboard URL, `exec(host, cmd)`, `popen(host, cmd)`,
`kill_raylet(host)` and `add_host()`. It is torn down (every process by pid, every namespace) at
the end of the session. Everything here skips, with the reason, where namespaces cannot be made.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netcluster import NetCluster, unavailable_reason  # noqa: E402

# Its own name and /24, so a developer's `scripts/netcluster.sh up` (bgpo, 10.211.7) can coexist.
SESSION_NAME = os.environ.get("BGPO_TEST_NETCLUSTER_NAME", "bgpotest")
SESSION_PREFIX = os.environ.get("BGPO_TEST_NETCLUSTER_PREFIX", "10.211.8")


def require_namespaces() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no namespace cluster here: {reason}")


def fresh_cluster(name: str, prefix: str, **kwargs) -> NetCluster:
    """A cluster handle with nothing left over from an earlier, interrupted run."""
    cluster = NetCluster(name=name, prefix=prefix, **kwargs)
    cluster.down()
    return cluster


@pytest.fixture(scope="session")
def netcluster():
    require_namespaces()
    cluster = fresh_cluster(SESSION_NAME, SESSION_PREFIX)
    cluster.up(3, ray=True)
    try:
        yield cluster
    finally:
        cluster.down()
