"""Weight sync against the raw link, across hosts of the namespace cluster and on one node.

In one run: a namespace cluster (tests/multinode/netcluster.py, no Ray: the data path is plain
processes placed with `ip netns exec`), the learner root on host 0 and 1, 2 and 4 receivers on
hosts 1..4; then the same members all on loopback in this namespace. For each receiver count one
launch measures, round by round interleaved (the machine is shared and noisy):
- tcp: one plain TCP stream host 0 -> host 1 into a touched buffer (the raw link);
- gloo: a plain gloo broadcast of one buffer of the same size to the same receivers;
- new:<shape>: the project's weight sync (cluster.weight_sync.send_weights, receive_into into
  FlatWeights, commit) of float32 Llama-shaped state dicts of 2.6, 84 and 336 MB; `auto` is what
  the project picks, the other shape is measured beside it;
- old: the implementation it replaced (whole-bucket pack, blocking broadcasts, copy on load).
Every weight-sync variant ends with a checked delivery (sha1 of every receiver's weights equals
the root's). Bytes/s is per receiver: model bytes / median seconds of a round (a round lasts
until every receiver has everything). Ratios: to the raw link of the same run and placement, and
to the plain gloo broadcast with the same receivers. On one machine all hosts share its cores, so
N receivers cost about N times the copying of one: ratios to the link below 1/N there say
nothing about a real cluster, whose hosts copy in parallel.

    .venv/bin/python benchmarks/weight_sync.py            # full run (root; about 5 min on 2 cores)
    .venv/bin/python benchmarks/weight_sync.py --quick    # 2.6 and 84 MB, 1 and 2 receivers
Writes benchmarks/results/weight_sync.json (with `uptime`'s load averages before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "multinode"))

from netcluster import NetCluster, unavailable_reason  # noqa: E402
from sync_member import SIZES, member_command, nbytes, run_members  # noqa: E402

LABELS = {"small": "2.6 MB", "medium": "84 MB", "large": "336 MB"}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def variants_for(receivers: int) -> list[str]:
    shapes = ["new:auto"] + (["new:broadcast", "new:chain"] if receivers > 1 else [])
    return ["tcp", "gloo", *shapes, "old:broadcast"]


def launch(cluster: NetCluster | None, receivers: int, args, port: int) -> list[dict]:
    """One launch: root + `receivers`, across hosts (cluster) or all on loopback (None)."""
    world = receivers + 1
    addrs = cluster.addresses[:world] if cluster else ["127.0.0.1"] * world
    cmds = []
    for rank in range(world):
        cmd = member_command("root" if rank == 0 else "recv", rank, world, f"{addrs[0]}:{port}", addrs[rank],
                             f"--sizes={','.join(args.sizes)}", f"--rounds={args.rounds}",
                             f"--variants={','.join(variants_for(receivers))}", f"--peer={addrs[1]}",
                             f"--chunk-mb={args.chunk_mb}", "--timeout=120")
        cmds.append(cluster.command(rank, cmd) if cluster else cmd)
    env = cluster.env() if cluster else dict(os.environ)
    return run_members(cmds, timeout=args.launch_timeout, env=env)


def summarise(placement: str, receivers: int, results: list[dict], sizes: list[str]) -> list[dict]:
    root, *others = results
    rows = []
    for size in sizes:
        med = {v: statistics.median(root[v][size]["seconds"]) for v in variants_for(receivers)}
        link = nbytes(size) / med["tcp"]
        gloo = nbytes(size) / med["gloo"]
        for variant in variants_for(receivers)[1:]:
            rate = nbytes(size) / med[variant]
            row = {"placement": placement, "receivers": receivers, "size": size, "bytes": nbytes(size),
                   "variant": variant, "median_s": med[variant], "seconds": root[variant][size]["seconds"],
                   "bytes_per_s": rate, "ratio_to_link": rate / link,
                   "ratio_to_gloo": rate / gloo, "link_bytes_per_s": link}
            if variant.startswith(("new:", "old:")):
                row["shape"] = root[variant]["shape"]
                row["bit_identical"] = all(o[variant][size]["digest"] == root[variant][size]["digest"]
                                           for o in others)
                if not row["bit_identical"]:
                    raise AssertionError(f"{placement} {variant} {size}: a receiver got other weights")
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'placement':<9} {'recv':>4} {'size':>7} {'variant':<14} {'shape':<9} {'median s':>8} "
          f"{'GB/s/recv':>9} {'x link':>7} {'x gloo':>7}")
    for r in rows:
        print(f"{r['placement']:<9} {r['receivers']:>4} {LABELS[r['size']]:>7} {r['variant']:<14} "
              f"{r.get('shape', '-'):<9} {r['median_s']:>8.3f} {r['bytes_per_s'] / 1e9:>9.2f} "
              f"{r['ratio_to_link']:>7.2f} {r['ratio_to_gloo']:>7.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2.6 and 84 MB, 1 and 2 receivers, 2 rounds")
    p.add_argument("--sizes", type=lambda s: s.split(","), default=list(SIZES))
    p.add_argument("--receivers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk-mb", type=int, default=32)
    p.add_argument("--no-loopback", action="store_true")
    p.add_argument("--launch-timeout", type=float, default=400)
    p.add_argument("--name", default="bgpowsb", help="namespace cluster name (its own, torn down after)")
    p.add_argument("--prefix", default="10.211.5")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "weight_sync.json"))
    args = p.parse_args()
    if args.quick:
        args.sizes, args.receivers, args.rounds = ["small", "medium"], [1, 2], 2
    started, load_before = time.monotonic(), load()
    reason = unavailable_reason()
    cluster = None
    if reason:
        print(f"no namespace cluster ({reason}): loopback only", file=sys.stderr)
    else:
        cluster = NetCluster(name=args.name, prefix=args.prefix)
        cluster.down()  # anything an interrupted run left
        cluster.up(1 + max(args.receivers), ray=False)
    rows = []
    try:
        placements = ([("hosts", cluster)] if cluster else []) + ([] if args.no_loopback else [("loopback", None)])
        port = 29900
        for placement, where in placements:
            for receivers in args.receivers:
                t0 = time.monotonic()
                results = launch(where, receivers, args, port)
                port += 20
                rows += summarise(placement, receivers, results, args.sizes)
                print(f"# {placement}, {receivers} receiver(s): {time.monotonic() - t0:.0f} s, load {load()}",
                      file=sys.stderr)
    finally:
        if cluster:
            cluster.down()
    print_table(rows)
    out = {"rows": rows, "load_before": load_before, "load_after": load(), "nproc": os.cpu_count(),
           "seconds": time.monotonic() - started, "rounds": args.rounds, "chunk_mb": args.chunk_mb,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": _torch_version(),
           "command": " ".join(["benchmarks/weight_sync.py", *sys.argv[1:]])}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"load average {load_before} -> {out['load_after']}; {out['seconds']:.0f} s; wrote {args.json}")


def _torch_version() -> str:
    return subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
