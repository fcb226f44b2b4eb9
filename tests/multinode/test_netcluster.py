"""The namespace cluster itself: hosts with their own addresses, nothing routable outside them,
Ray nodes that report those addresses, node join and loss, and a `down` that leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fresh_cluster, require_namespaces

pytestmark = pytest.mark.multinode

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "netcluster.sh"


def test_ray_nodes_have_their_hosts_addresses(netcluster):
    alive = netcluster.alive_nodes()
    assert sorted(n["node_ip"] for n in alive) == sorted(netcluster.addresses)
    for node in alive:
        host = netcluster.addresses.index(node["node_ip"])
        assert node["resources_total"].get(f"host{host}") == 1.0
        assert node["labels"].get("host") == f"host{host}"
    # `ray status` (the autoscaler's view) can lag the state API by a few seconds.
    ray_status = [str(Path(sys.executable).parent / "ray"), "status", f"--address={netcluster.gcs_address}"]
    deadline = time.monotonic() + 30
    while (out := netcluster.exec(0, ray_status).stdout).count(" node_") < 3 and time.monotonic() < deadline:
        time.sleep(1)
    assert out.count(" node_") == 3, out
    assert netcluster.dashboard_url == f"http://{netcluster.addresses[0]}:8265"


def test_hosts_reach_each_other_and_nothing_else(netcluster):
    code = ("import socket,sys\n"
            "for addr in sys.argv[1:]:\n"
            "    s=socket.socket(); s.settimeout(3)\n"
            "    try: s.connect((addr, 8265)); print(addr, 'open')\n"
            "    except OSError as e: print(addr, e.errno)\n")
    outside = "192.0.2.1"  # TEST-NET-1: stands for any address outside the namespaces
    out = netcluster.exec(2, [sys.executable, "-c", code, netcluster.addresses[0], outside]).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines[netcluster.addresses[0]] == "open"  # the head's dashboard, from another host
    assert lines[outside] == "101"  # ENETUNREACH: there is no route out at all
    routes = netcluster.exec(1, ["ip", "route"]).stdout
    assert "default" not in routes and routes.strip().startswith(f"{netcluster.prefix}.0/24"), routes


def test_join_loss_and_down_leave_nothing_behind():
    require_namespaces()
    cluster = fresh_cluster("bgpojoin", "10.211.6")
    subprocess.run([str(SCRIPT), "up", "2"], check=True, timeout=180, capture_output=True,
                   env={**cluster.env(), "NETCLUSTER_NAME": cluster.name, "NETCLUSTER_PREFIX": cluster.prefix,
                        "PYTHON": sys.executable})
    try:
        assert len(cluster.alive_nodes()) == 2
        host = cluster.add_host()  # node join
        assert {n["node_ip"] for n in cluster.alive_nodes()} == set(cluster.addresses)
        pid = cluster.kill_raylet(host)  # node loss
        deadline, states = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            states = {n["node_ip"]: n["state"] for n in cluster.nodes()}
            if states.get(cluster.address(host)) == "DEAD":
                break
            time.sleep(0.5)
        assert states.get(cluster.address(host)) == "DEAD", states
        assert not Path(f"/proc/{pid}").exists() or "raylet" not in Path(f"/proc/{pid}/comm").read_text()
        pids = [p for h in cluster.hosts for p in cluster.pids(h)]
        assert pids
    finally:
        killed = cluster.down()
    assert set(pids) <= set(killed)
    assert not [p for p in pids if Path(f"/proc/{p}").exists() and _not_zombie(p)]
    assert cluster._namespaces() == []
    marker = str(cluster.state_dir).encode()
    left = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]
    assert left == [], f"processes naming {cluster.state_dir} survived down: {left}"


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline_has(proc: Path, marker: bytes) -> bool:
    try:
        return marker in (proc / "cmdline").read_bytes()
    except OSError:
        return False
