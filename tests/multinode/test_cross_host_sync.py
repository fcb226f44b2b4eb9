"""Weight sync across hosts: learner root on host 0, receivers on hosts 1 and 2, as plain
processes in the namespaces (tests/multinode/sync_member.py), through cluster.weight_sync.

Each receiver holds a zero-filled model whose weights are FlatWeights and must end with weights
bit-identical to the root's (sha1 over every tensor). The negative case builds the group as the
project did before cluster.network (gloo's default device, from the hostname): across hosts it
advertises 127.0.0.1 and the receivers cannot connect, which is the failure of issue 11.
"""

from __future__ import annotations

import pytest
from sync_member import member_command, run_members

pytestmark = pytest.mark.multinode


def _members(cluster, port: int, *extra: str) -> list[list[str]]:
    addrs = cluster.addresses
    return [cluster.command(rank, member_command("root" if rank == 0 else "recv", rank, 3,
                                                 f"{addrs[0]}:{port}", addrs[rank], *extra))
            for rank in range(3)]


def test_broadcast_to_two_hosts_is_bit_identical(netcluster):
    # Both shapes in one launch (start-up dominates on 2 cores); each sends other values.
    results = run_members(_members(netcluster, 29710, "--variants=new:chain,new:broadcast", "--sizes=small",
                                   "--rounds=2", "--seed=7", "--timeout=30"), timeout=150,
                          env=netcluster.env())
    root, *receivers = results
    assert root["new:chain"]["small"]["digest"] != root["new:broadcast"]["small"]["digest"]
    for shape in ("chain", "broadcast"):
        for rank, got in enumerate(receivers, start=1):
            sent, came = root[f"new:{shape}"], got[f"new:{shape}"]
            assert came["shape"] == shape
            assert came["endpoint"] == [netcluster.addresses[rank], "eth0"]  # own address, own link
            assert came["small"]["digest"] == sent["small"]["digest"], f"{shape}: receiver {rank}"
            assert came["small"]["bytes"] == sent["small"]["bytes"] == 2_624_000


def test_hostname_bound_gloo_fails_across_hosts(netcluster):
    with pytest.raises((TimeoutError, RuntimeError)) as failure:
        run_members(_members(netcluster, 29720, "--default-device", "--timeout=4"), timeout=10,
                    env=netcluster.env())
    assert "127.0.0.1" in str(failure.value)
