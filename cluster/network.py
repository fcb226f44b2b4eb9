"""Which address and interface a process uses for rendezvous and collectives on a cluster.

On a cluster every rendezvous (the learner group's `init_method`, the weight-sync TCPStore) binds
and advertises the node's own address, the one Ray knows it by (`ray.util.get_node_ip_address()`
inside the actor), and gloo/NCCL move data over the interface that holds that address. Left to
themselves they take the address the hostname resolves to, which is often 127.0.0.1 (a stock
/etc/hosts), and the peers on other hosts then connect to their own loopback.

The interface is found by address from the kernel's own tables (ioctl SIOCGIFADDR per interface,
`/proc/net/if_inet6`, then `ip -o addr` for secondary addresses): no hostname lookup anywhere. An
explicit interface (a config key such as `cluster.network_interface`) overrides the choice: its
address is then used for the rendezvous too, so control and data take the same link.

On the private local cluster (`bgpo train` without RAY_ADDRESS, Ray forced onto loopback by the
launcher) the node address is 127.0.0.1 and all of this resolves to `lo`: nothing special-cased.
This module creates no process groups; cluster/weight_sync.py and cluster/actors.py do.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SIOCGIFADDR = 0x8915  # linux/sockios.h: the interface's (primary) IPv4 address


@dataclass(frozen=True)
class Endpoint:
    """Where this process is reachable: the address peers connect to and the interface behind it."""

    address: str  # numeric IPv4 or IPv6 address
    interface: str  # e.g. "eth0", "ib0", "lo"

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def node_address() -> str:
    """This node's address as Ray knows it (only inside a Ray worker or a connected driver)."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("node_address() needs Ray: pass the address explicitly outside Ray")
    return ray.util.get_node_ip_address()


def interface_addresses() -> dict[str, list[str]]:
    """Every interface and the numeric addresses it holds (IPv4 first)."""
    table: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            table.setdefault(name, [])
            try:
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            table[name].append(socket.inet_ntoa(packed[20:24]))
    for name, address in _secondary_addresses():
        if address not in table.setdefault(name, []):
            table[name].append(address)
    return table


def _secondary_addresses() -> list[tuple[str, str]]:
    """IPv6 from /proc, plus every IPv4 `ip` lists (the ioctl sees one address per interface)."""
    found = []
    inet6 = Path("/proc/net/if_inet6")
    if inet6.exists():
        for line in inet6.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6:
                found.append((fields[5], str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))))
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                             check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):  # no iproute2: the ioctl's view stands
        return found
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet":
            found.append((fields[1].split("@")[0], fields[3].split("/")[0]))
    return found


def interface_for(address: str) -> str:
    """The interface holding `address`; fails, listing what exists, if no interface holds it."""
    wanted = ipaddress.ip_address(address)
    table = interface_addresses()
    for name, addresses in table.items():
        if any(ipaddress.ip_address(a) == wanted for a in addresses):
            return name
    raise LookupError(f"no interface holds {address}: {table}")


def address_of(interface: str) -> str:
    """The first IPv4 address of `interface` (IPv6 when it has none)."""
    table = interface_addresses()
    if interface not in table:
        raise LookupError(f"no interface {interface!r} here (have {sorted(table)})")
    if not table[interface]:
        raise LookupError(f"interface {interface!r} holds no address")
    v4 = [a for a in table[interface] if ipaddress.ip_address(a).version == 4]
    return (v4 or table[interface])[0]


def resolve(address: str | None = None, interface: str | None = None) -> Endpoint:
    """This process's endpoint. `interface` (the config override) wins; else `address`, else Ray's
    node address, with the interface that holds it."""
    if interface:
        return Endpoint(address or address_of(interface), interface)
    address = address or node_address()
    return Endpoint(address, interface_for(address))


def socket_env(endpoint: Endpoint) -> dict[str, str]:
    """The variables that pin gloo's and NCCL's sockets to the endpoint's interface."""
    return {"GLOO_SOCKET_IFNAME": endpoint.interface, "NCCL_SOCKET_IFNAME": endpoint.interface}


def pin_sockets(endpoint: Endpoint, override: bool = False) -> dict[str, str]:
    """Set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME in this process before any group is created
    (`init_process_group` and NCCL read them then). A value the user exported is kept unless
    `override` (an explicit interface in the config); returns the values now in force."""
    for key, value in socket_env(endpoint).items():
        if override or key not in os.environ:
            os.environ[key] = value
    return {k: os.environ[k] for k in socket_env(endpoint)}


def gloo_device(endpoint: Endpoint):
    """A gloo transport device bound to the endpoint's address (no hostname lookup)."""
    import torch.distributed as dist

    return dist.ProcessGroupGloo.create_device(hostname=endpoint.address)


def free_port(host: str) -> int:
    """A TCP port nobody listens on at `host` right now (the caller binds it a moment later)."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def init_method(host: str, port: int) -> str:
    """`tcp://` rendezvous URL for torch.distributed at a numeric address (IPv6 in brackets)."""
    return f"tcp://[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"tcp://{host}:{port}"


__all__ = [
    "Endpoint",
    "address_of",
    "free_port",
    "gloo_device",
    "init_method",
    "interface_addresses",
    "interface_for",
    "node_address",
    "pin_sockets",
    "resolve",
    "socket_env",
]
