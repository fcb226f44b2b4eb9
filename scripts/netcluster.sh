#!/usr/bin/env bash
# Several Ray hosts on one machine, in network namespaces on one private /24 (needs root).
#   scripts/netcluster.sh up N [--no-ray]   build N hosts (and a Ray cluster, head on host 0)
#   scripts/netcluster.sh status            hosts, addresses, dashboard, pids
#   scripts/netcluster.sh exec HOST CMD...  run CMD inside host HOST (0, 1, ... or host1)
#   scripts/netcluster.sh add               node join: one more host, its Ray node joins the head
#   scripts/netcluster.sh kill-raylet HOST  node loss: SIGKILL that host's raylet
#   scripts/netcluster.sh down              kill the cluster's processes by pid, delete namespaces
# Env: NETCLUSTER_NAME (default bgpo), NETCLUSTER_PREFIX (default 10.211.7), NETCLUSTER_CPUS (1),
# PYTHON (default: the checkout's .venv). The implementation is tests/multinode/netcluster.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
exec "$python" "$root/tests/multinode/netcluster.py" "$@"
