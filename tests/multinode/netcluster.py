"""Several Ray hosts on one machine: network namespaces joined by a bridge on one private /24.

Layout (name `bgpo`, prefix `10.211.7` by default; NETCLUSTER_NAME / NETCLUSTER_PREFIX override
them, so two clusters can coexist):
- a bridge `br0` alone in the namespace `<name>-br`;
- host i in the namespace `<name>-h<i>`, its `eth0` (one end of a veth pair, the other end on the
  bridge) holding `<prefix>.<i+1>/24`, loopback up, no default route: the /24 exists only inside
  these namespaces and nothing in them can reach any other address;
- with Ray: host 0 runs the head (GCS on :6379, dashboard on <host 0>:8265), every other host a
  `ray start --address`, each with `--node-ip-address` = its own address, its own `--temp-dir`
  (under the state dir), the custom resource `{"host<i>": 1}` and the node label `host=host<i>`
  for placement.

The namespaces share the machine's filesystem and process table, so stopping is by pid: `down`
kills every process inside the cluster's namespaces (`ip netns pids`) and any process whose command
line names the cluster's state dir, then deletes the namespaces (which deletes the links). It never
runs `ray stop`, which would kill every Ray process on the machine.

This module is the one implementation behind scripts/netcluster.sh and tests/multinode/conftest.py.
It needs root and iproute2; `unavailable_reason()` says why a cluster cannot be built. Standard
library only, so any Python can run it; Ray itself comes from NETCLUSTER_RAY or next to the
running interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GCS_PORT = 6379
DASHBOARD_PORT = 8265
# Ray variables that would break a namespace cluster or point its processes elsewhere.
_STRIPPED_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_NODE_IP_ADDRESS")
# A raylet the GCS cannot reach is declared dead after about period x threshold (Ray's defaults
# take ~30 s); the node-loss tests want it within a few seconds.
_HEAD_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
             "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_timeout_ms": "1000"}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def unavailable_reason(probe_name: str = "ncprobe") -> str | None:
    """Why namespaces cannot be made here (None when they can): for pytest.skip."""
    if os.geteuid() != 0:
        return f"network namespaces need root (euid is {os.geteuid()})"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    ns = f"{probe_name}-{os.getpid()}"
    made = _ip("netns", "add", ns, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        link = _ip("link", "add", f"{probe_name[:6]}{os.getpid() % 10000}a", "type", "veth",
                   "peer", "name", f"{probe_name[:6]}{os.getpid() % 10000}b", "netns", ns, check=False)
        if link.returncode != 0:
            return f"`ip link add ... type veth` failed: {link.stderr.strip()}"
        _ip("link", "del", f"{probe_name[:6]}{os.getpid() % 10000}a", check=False)
    finally:
        _ip("netns", "del", ns, check=False)
    return None


def _ray_binary() -> str:
    explicit = os.environ.get("NETCLUSTER_RAY")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise FileNotFoundError("no `ray` executable: set NETCLUSTER_RAY or run with the venv's python")
    return found


@dataclass
class NetCluster:
    """One namespace cluster, named; its state (hosts, options) lives in `state_dir`."""

    name: str = "bgpo"
    prefix: str = "10.211.7"  # the /24: host i is <prefix>.<i+1>
    num_cpus: float = 1  # per host: the machine is small
    object_store_mb: int = 256  # per host
    state_root: str = "/tmp"

    def __post_init__(self) -> None:
        # veth names in the root namespace are `<name><i>a`: at most 15 characters.
        if not self.name.isalnum() or len(self.name) > 8:
            raise ValueError(f"cluster name {self.name!r}: at most 8 letters or digits")
        parts = self.prefix.split(".")
        if len(parts) != 3 or not all(p.isdigit() and int(p) < 256 for p in parts):
            raise ValueError(f"prefix {self.prefix!r} is not the first three octets of a /24")

    @classmethod
    def from_env(cls) -> NetCluster:
        return cls(
            name=os.environ.get("NETCLUSTER_NAME", "bgpo"),
            prefix=os.environ.get("NETCLUSTER_PREFIX", "10.211.7"),
            num_cpus=float(os.environ.get("NETCLUSTER_CPUS", "1")),
        )

    # ---- names and addresses ------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return Path(self.state_root) / f"netcluster-{self.name}"

    @property
    def bridge_ns(self) -> str:
        return f"{self.name}-br"

    def ns(self, host: int) -> str:
        return f"{self.name}-h{host}"

    def address(self, host: int) -> str:
        return f"{self.prefix}.{host + 1}"

    def temp_dir(self, host: int) -> Path:
        return self.state_dir / f"h{host}"

    @property
    def gcs_address(self) -> str:
        return f"{self.address(0)}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.address(0)}:{DASHBOARD_PORT}"

    @property
    def hosts(self) -> list[int]:
        return self._state().get("hosts", [])

    @property
    def addresses(self) -> list[str]:
        return [self.address(h) for h in self.hosts]

    @property
    def with_ray(self) -> bool:
        return bool(self._state().get("ray", False))

    def _state(self) -> dict:
        path = self.state_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self, **changes) -> None:
        state = {**self._state(), **changes}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "state.json").write_text(json.dumps(state))

    # ---- lifecycle ----------------------------------------------------------------------------

    def up(self, n: int, ray: bool = True) -> NetCluster:
        """Build n hosts (and start Ray on them); fails if this cluster already exists."""
        if n < 1 or n > 250:
            raise ValueError(f"between 1 and 250 hosts, not {n}")
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(f"cannot build a namespace cluster: {reason}")
        existing = [ns for ns in self._namespaces()]
        if existing or self.state_dir.exists():
            raise RuntimeError(f"cluster {self.name!r} exists ({existing or self.state_dir}): run down first")
        self._save(hosts=[], ray=ray, prefix=self.prefix)
        try:
            _ip("netns", "add", self.bridge_ns)
            self._in(self.bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
            self._in(self.bridge_ns, "ip", "link", "set", "br0", "up")
            for host in range(n):
                self._make_host(host)
            if ray:
                self._start_head()
                starts = [self._start_worker(h, wait=False) for h in range(1, n)]
                for host, proc in zip(range(1, n), starts, strict=True):
                    self._finish_start(host, proc)
                self.wait_nodes(n)
        except BaseException:
            self.down()
            raise
        return self

    def add_host(self) -> int:
        """Node join: one more host on the bridge (and a Ray node joining the head); its index."""
        host = max(self.hosts) + 1 if self.hosts else 0
        alive = len(self.alive_nodes()) if self.with_ray else 0
        self._make_host(host)
        if self.with_ray:
            self._start_worker(host)
            self.wait_nodes(alive + 1)
        return host

    def down(self) -> list[int]:
        """Kill every process of this cluster by pid, delete its namespaces; the pids killed."""
        killed = self._kill(self._cluster_pids())
        for ns in self._namespaces():
            _ip("netns", "del", ns, check=False)
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        left = self._namespaces()
        if left:
            raise RuntimeError(f"namespaces left behind: {left}")
        return killed

    def kill_raylet(self, host: int) -> int:
        """Node loss: SIGKILL this host's raylet (its workers die with it); the raylet's pid."""
        for pid in self.pids(host):
            if _comm(pid) == "raylet":
                os.kill(pid, signal.SIGKILL)
                return pid
        raise RuntimeError(f"no raylet runs on host {host} ({self.ns(host)})")

    def kill_host(self, host: int) -> list[int]:
        """Host loss: SIGKILL every process of this host at once (raylet and workers alike).

        Killing only the raylet is a node loss, but its workers keep serving direct actor calls
        until they notice, so a short run can finish on a host Ray already counts as lost."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    # ---- running things -----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for processes on the hosts (Ray's loopback forcing removed)."""
        env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
        env["RAY_AUTH_MODE"] = "disabled"  # a throwaway cluster reachable only from its namespaces
        return env

    def command(self, host: int, cmd: list[str]) -> list[str]:
        """`cmd` run inside host's namespace (for subprocess.Popen)."""
        return ["ip", "netns", "exec", self.ns(host), *cmd]

    def exec(self, host: int, cmd: list[str], timeout: float | None = 120, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` on a host and wait; stdout and stderr are captured as text."""
        return subprocess.run(self.command(host, cmd), env={**self.env(), **(env or {})},
                              capture_output=True, text=True, timeout=timeout, check=check)

    def popen(self, host: int, cmd: list[str], env: dict[str, str] | None = None,
              **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(host, cmd), env={**self.env(), **(env or {})}, **kwargs)

    def pids(self, host: int) -> list[int]:
        out = _ip("netns", "pids", self.ns(host), check=False).stdout.split()
        return [int(p) for p in out]

    def alive_nodes(self) -> list[dict]:
        """Alive Ray nodes as the dashboard's state API lists them (asked from host 0)."""
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

    def nodes(self) -> list[dict]:
        """Every Ray node the head knows (state API `/api/v0/nodes`), dead ones included."""
        code = ("import json,urllib.request;"
                f"print(urllib.request.urlopen('{self.dashboard_url}/api/v0/nodes?limit=1000&detail=1',"
                "timeout=5).read().decode())")
        out = self.exec(0, [sys.executable, "-c", code], timeout=20).stdout
        return json.loads(out)["data"]["result"]["result"]

    def wait_nodes(self, n: int, timeout: float = 60) -> list[dict]:
        """Block until the head lists at least n alive nodes."""
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            try:
                alive = self.alive_nodes()
                if len(alive) >= n:
                    return alive
                last = f"{len(alive)} alive"
            except (subprocess.SubprocessError, ValueError, KeyError) as err:
                last = f"state API not ready: {err}"
            time.sleep(0.5)
        raise TimeoutError(f"cluster {self.name!r}: wanted {n} alive nodes within {timeout:.0f} s ({last})")

    def status(self) -> dict:
        return {
            "name": self.name, "prefix": self.prefix, "hosts": self.hosts, "addresses": self.addresses,
            "namespaces": self._namespaces(), "ray": self.with_ray,
            "dashboard": self.dashboard_url if self.with_ray else None,
            "gcs": self.gcs_address if self.with_ray else None,
            "pids": {h: self.pids(h) for h in self.hosts},
        }

    # ---- internals ----------------------------------------------------------------------------

    def _in(self, ns: str, *cmd: str) -> None:
        _ip("netns", "exec", ns, *cmd)

    def _make_host(self, host: int) -> None:
        ns, outer, inner = self.ns(host), f"{self.name}{host}a", f"{self.name}{host}b"
        _ip("netns", "add", ns)
        self._save(hosts=sorted({*self.hosts, host}))
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "netns", self.bridge_ns)
        _ip("link", "set", inner, "netns", ns)
        # Inside the host the link is plain eth0, as on a real machine.
        self._in(ns, "ip", "link", "set", inner, "name", "eth0")
        self._in(ns, "ip", "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
        self._in(ns, "ip", "link", "set", "eth0", "up")
        self._in(ns, "ip", "link", "set", "lo", "up")
        self._in(self.bridge_ns, "ip", "link", "set", outer, "master", "br0")
        self._in(self.bridge_ns, "ip", "link", "set", outer, "up")

    def _ray_args(self, host: int) -> list[str]:
        return [
            _ray_binary(), "start", f"--node-ip-address={self.address(host)}",
            f"--temp-dir={self.temp_dir(host)}", f"--num-cpus={self.num_cpus:g}",
            f"--resources={json.dumps({f'host{host}': 1})}", f"--labels=host=host{host}",
            f"--object-store-memory={self.object_store_mb * 2**20}", "--disable-usage-stats",
        ]

    def _start_head(self) -> None:
        args = self._ray_args(0) + ["--head", f"--port={GCS_PORT}", f"--dashboard-host={self.address(0)}",
                                    f"--dashboard-port={DASHBOARD_PORT}", "--include-dashboard=true"]
        proc = self.popen(0, args, env=_HEAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._finish_start(0, proc)

    def _start_worker(self, host: int, wait: bool = True) -> subprocess.Popen:
        args = self._ray_args(host) + [f"--address={self.gcs_address}"]
        proc = self.popen(host, args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if wait:
            self._finish_start(host, proc)
        return proc

    def _finish_start(self, host: int, proc: subprocess.Popen) -> None:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start on host {host} failed ({proc.returncode}):\n{out[-3000:]}")

    def _namespaces(self) -> list[str]:
        names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line]
        return sorted(n for n in names if n == self.bridge_ns or n.startswith(f"{self.name}-h"))

    def _cluster_pids(self) -> list[int]:
        pids = {p for ns in self._namespaces() for p in _ip("netns", "pids", ns, check=False).stdout.split()}
        marker = str(self.state_dir).encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        pids.add(entry.name)
                except OSError:  # exited while we looked
                    continue
        return sorted(int(p) for p in pids if int(p) != os.getpid())

    def _kill(self, pids: list[int], grace_s: float = 5.0) -> list[int]:
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.1)
        left = [p for p in pids if _alive(p)]
        if left:
            raise RuntimeError(f"processes survived SIGKILL: {left}")
        return pids


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie counts as gone: it only waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _host(arg: str) -> int:
    return int(arg.removeprefix("host").removeprefix("h"))


def main(argv: list[str]) -> int:
    usage = ("usage: netcluster.sh up N [--no-ray] | down | status | add | kill-raylet HOST | "
             "exec HOST CMD...   (env: NETCLUSTER_NAME, NETCLUSTER_PREFIX, NETCLUSTER_CPUS)")
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    cluster, verb, rest = NetCluster.from_env(), argv[0], argv[1:]
    if verb == "up" and rest:
        started = time.monotonic()
        cluster.up(int(rest[0]), ray="--no-ray" not in rest)
        print(json.dumps(cluster.status(), indent=1))
        print(f"up in {time.monotonic() - started:.1f} s", file=sys.stderr)
    elif verb == "down":
        print(f"killed {len(cluster.down())} processes; namespaces deleted")
    elif verb == "status":
        print(json.dumps(cluster.status(), indent=1))
    elif verb == "add":
        print(f"host {cluster.add_host()} joined")
    elif verb == "kill-raylet" and rest:
        print(f"killed raylet pid {cluster.kill_raylet(_host(rest[0]))}")
    elif verb == "exec" and len(rest) >= 2:
        # Replace this process: the command's exit status and streams are the caller's.
        os.execvpe("ip", cluster.command(_host(rest[0]), rest[1:]), cluster.env())
    else:
        print(usage, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
