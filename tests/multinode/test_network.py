"""cluster.network: endpoints found by address from the kernel's tables, never the hostname.
Not marked multinode: it needs no namespaces (the cross-host proof is test_cross_host_sync.py)."""

from __future__ import annotations

import socket

import pytest

from cluster import network


def test_interface_is_found_by_address_and_address_by_interface():
    table = network.interface_addresses()
    assert "127.0.0.1" in table["lo"]
    for addresses in table.values():
        for address in addresses:
            if not address.startswith("fe80"):  # link-local: ambiguous across interfaces
                assert network.interface_for(address) in {n for n, a in table.items() if address in a}
    assert network.resolve("127.0.0.1") == network.Endpoint("127.0.0.1", "lo")
    assert network.resolve(interface="lo") == network.Endpoint("127.0.0.1", "lo")
    assert network.resolve("127.0.0.1").is_loopback


def test_unknown_address_or_interface_fails_with_what_exists():
    with pytest.raises(LookupError, match="no interface holds 198.51.100.77"):
        network.interface_for("198.51.100.77")
    with pytest.raises(LookupError, match="no interface 'nosuch0'"):
        network.address_of("nosuch0")
    with pytest.raises(RuntimeError, match="needs Ray"):
        network.node_address()


def test_pin_sockets_keeps_a_users_choice_unless_overridden(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    endpoint = network.Endpoint("127.0.0.1", "lo")
    assert network.pin_sockets(endpoint) == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "ib0"}
    assert network.pin_sockets(endpoint, override=True) == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}


def test_free_port_binds_the_address_it_is_given():
    port = network.free_port("127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free a moment later
    assert network.init_method("127.0.0.1", port) == f"tcp://127.0.0.1:{port}"
    assert network.init_method("::1", 5) == "tcp://[::1]:5"
    with pytest.raises(OSError):
        network.free_port("198.51.100.77")  # an address this machine does not hold
