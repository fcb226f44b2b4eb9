"""One member of a weight transfer as a plain process (no Ray): the multinode tests and
benchmarks/weight_sync.py run it on the namespace hosts with `ip netns exec`.

    python tests/multinode/sync_member.py ROLE --rank R --world W --store ADDR:PORT --addr MY_ADDR ...

Roles:
- `root` / `recv`: the project's weight sync (cluster.weight_sync): the root sends a deterministic
  float32 state dict of Llama shapes (`--sizes small,medium,large`: 2.6, 84 and 336 MB); receivers
  hold a model whose weights are FlatWeights and receive with `receive_into` + `commit`
  (`--impl new`), or run the code this replaced (`--impl old`: whole buckets packed, fresh
  receive buffers, then a copy into the model).
- `gloo`: a plain ProcessGroupGloo broadcast of one buffer of each size (the collective's limit).
- `tcp-recv` / `tcp-send`: one plain TCP stream (the link's limit), receiver at --addr.
`--default-device` builds the gloo group the way the project did before cluster.network (no
device: gloo binds what the hostname resolves to), to show the failure across hosts.
Each timed round runs between two barriers, so it covers delivery to every receiver. The member
prints one JSON line: per size, the round times and (receivers) a sha1 digest of what arrived.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

# The checkout, for cluster/ and dllm/ (imported where used: the baselines need torch only).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# name: (hidden, layers, intermediate, vocab); float32 sizes 2.62, 83.9 and 335.6 MB.
SIZES = {"small": (128, 2, 512, 512), "medium": (512, 4, 2048, 4096), "large": (1024, 4, 4096, 8192)}


def llama_shapes(hidden: int, layers: int, inter: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"{p}mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, inter)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def source_state(size: str, seed: int) -> dict[str, torch.Tensor]:
    """What the learner sends: reproducible values (a different seed changes every tensor)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in llama_shapes(*SIZES[size]).items()}


def receiver_module(size: str) -> nn.Module:
    """A module with the state dict's names and shapes, zero-filled (what a rollout worker has)."""
    root = nn.Module()
    for name, shape in llama_shapes(*SIZES[size]).items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(torch.zeros(shape), requires_grad=False))
    return root


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def nbytes(size: str) -> int:
    return sum(4 * int(torch.Size(s).numel()) for s in llama_shapes(*SIZES[size]).values())




def _barrier(pg) -> None:
    pg.barrier().wait()


def run_project(args) -> dict:
    """Per shape in --shape (comma-separated) and size: round times and the digest delivered."""
    if args.default_device:  # the group as it was built before cluster.network, for the negative test
        host, port = args.store.rsplit(":", 1)
        store = dist.TCPStore(host, int(port), args.world, is_master=args.rank == 0,
                              timeout=timedelta(seconds=args.timeout))
        pg = dist.ProcessGroupGloo(dist.PrefixStore("weights-epoch-1/", store), args.rank, args.world,
                                   timedelta(seconds=args.timeout))
        _barrier(pg)
        return {"connected": True}
    from cluster.weight_sync import SyncGroup, SyncGroupSpec, plan_for

    host, port = args.store.rsplit(":", 1)
    groups = {}
    for i, shape in enumerate(args.shape.split(",")):  # one group per shape, on the next port
        spec = SyncGroupSpec(host, int(port) + i, args.world, epoch=1, backend="gloo",
                             timeout_s=args.timeout, shape=shape, chunk_mb=args.chunk_mb)
        groups[shape] = SyncGroup(spec, args.rank, torch.device("cpu"), address=args.addr)
    out = {shape: {"shape": g.shape, "endpoint": [g.endpoint.address, g.endpoint.interface]}
           for shape, g in groups.items()}
    for size in args.sizes:
        if args.rank == 0:
            state = source_state(size, args.seed)
        else:
            state = receiver_module(size)
        buckets = plan_for(state if args.rank == 0 else state.state_dict(), args.bucket_mb)
        flat = None
        for i, (shape, group) in enumerate(groups.items()):
            if args.rank == 0 and i:  # every shape delivers other values than the one before
                for tensor in state.values():
                    tensor.add_(1.0)
            if args.rank == 0:
                seconds = _send_rounds(args, group, state, buckets)
                dig = digest(state)
            else:
                if flat is None and args.impl == "new":
                    from dllm.weights import FlatWeights

                    flat = FlatWeights(state, buckets)
                seconds = _receive_rounds(args, group, state, buckets, flat)
                dig = digest(state.state_dict())
            out[shape][size] = {"seconds": seconds, "bytes": nbytes(size), "digest": dig}
    for group in groups.values():
        group.close()
    return out


def _send_rounds(args, group, state: dict, buckets: list) -> list[float]:
    from cluster.weight_sync import send_weights
    from dllm.weights import pack_bucket

    seconds = []
    for _ in range(args.rounds):
        _barrier(group._pg)
        start = time.perf_counter()
        if args.impl == "new":
            send_weights(group, state, buckets)
        else:  # before: each whole bucket packed, then one blocking broadcast
            for bucket in buckets:
                group.broadcast(pack_bucket(bucket, state))
        _barrier(group._pg)
        seconds.append(time.perf_counter() - start)
    return seconds


def _receive_rounds(args, group, model: nn.Module, buckets: list, flat) -> list[float]:
    from cluster.weight_sync import receive_into
    from dllm.weights import load_buckets_into

    seconds = []
    for _ in range(args.rounds):
        _barrier(group._pg)
        start = time.perf_counter()
        if flat is not None:
            receive_into(group, buckets, flat)
            flat.commit()
        else:  # before: fresh buffers, one blocking broadcast each, then a copy into the model
            flats = [torch.empty(b.numel, dtype=b.torch_dtype) for b in buckets]
            for f in flats:
                group.broadcast(f)
            load_buckets_into(model, buckets, flats)
        _barrier(group._pg)
        seconds.append(time.perf_counter() - start)
    return seconds


def run_gloo(args) -> dict:
    host, port = args.store.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), args.world, is_master=args.rank == 0,
                          timeout=timedelta(seconds=args.timeout))
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timedelta(seconds=args.timeout)
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=args.addr)]
    pg = dist.ProcessGroupGloo(store, args.rank, args.world, options)
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    out = {}
    for size in args.sizes:
        buf = torch.ones(nbytes(size) // 4)  # touched: no page faults inside the timing
        seconds = []
        for _ in range(args.rounds):
            _barrier(pg)
            start = time.perf_counter()
            pg.broadcast([buf], opts).wait()
            _barrier(pg)
            seconds.append(time.perf_counter() - start)
        out[size] = {"seconds": seconds, "bytes": nbytes(size)}
    return out


def run_tcp(args) -> dict:
    """One stream, receiver side timed from its first byte to its last, per size and round."""
    host, port = args.store.rsplit(":", 1)
    chunk = memoryview(bytearray(4 * 2**20))
    out = {}
    if args.role == "tcp-recv":
        server = socket.create_server((args.addr, int(port)))
        conn, _ = server.accept()
        for size in args.sizes:
            seconds, want = [], nbytes(size)
            for _ in range(args.rounds):
                got = conn.recv_into(chunk)
                start = time.perf_counter()
                while got < want:
                    n = conn.recv_into(chunk, min(len(chunk), want - got))
                    if n == 0:
                        raise ConnectionError(f"sender closed after {got} of {want} bytes")
                    got += n
                seconds.append(time.perf_counter() - start)
                conn.sendall(b"k")  # the next round starts when the receiver is ready
            out[size] = {"seconds": seconds, "bytes": want}
        conn.close()
    else:
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                conn = socket.create_connection((host, int(port)), timeout=args.timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for size in args.sizes:
            for _ in range(args.rounds):
                left = nbytes(size)
                while left:
                    view = chunk[: min(len(chunk), left)]
                    conn.sendall(view)
                    left -= len(view)
                if conn.recv(1) != b"k":
                    raise ConnectionError("receiver did not acknowledge")
        conn.close()
    return out


def member_command(role: str, rank: int, world: int, store: str, addr: str, *extra: str) -> list[str]:
    """The argv that runs one member (prefix it with `ip netns exec HOST` to place it)."""
    return [sys.executable, str(Path(__file__).resolve()), role, f"--rank={rank}", f"--world={world}",
            f"--store={store}", f"--addr={addr}", *extra]


def run_members(commands: list[list[str]], timeout: float, env: dict[str, str] | None = None) -> list[dict]:
    """Start every member at once, wait for all; their JSON lines in order. Fails (killing the
    rest) if one exits non-zero or the whole exceeds `timeout`, with each member's stderr tail."""
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for c in commands]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(0.1, deadline - time.monotonic())))
    except subprocess.TimeoutExpired as err:
        for proc in procs:
            proc.kill()
        tails = [proc.communicate()[1][-600:] for proc in procs]
        raise TimeoutError(f"members did not finish within {timeout:.0f} s: {tails}") from err
    failed = [(i, p.returncode, o[1][-1500:]) for i, (p, o) in enumerate(zip(procs, outputs)) if p.returncode]
    if failed:
        raise RuntimeError(f"members failed (index, exit status, stderr): {failed}")
    return [json.loads(o[0].strip().splitlines()[-1]) for o in outputs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["root", "recv", "gloo", "tcp-send", "tcp-recv"])
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--store", required=True, help="ADDR:PORT of rank 0 (the TCP receiver for tcp-*)")
    p.add_argument("--addr", required=True, help="this member's own address")
    p.add_argument("--sizes", type=lambda s: s.split(","), default=["small"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--impl", choices=["new", "old"], default="new")
    p.add_argument("--shape", default="auto")
    p.add_argument("--chunk-mb", type=int, default=32)
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--default-device", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.role in ("root", "recv"):
        result = run_project(args)
    elif args.role == "gloo":
        result = run_gloo(args)
    else:
        result = run_tcp(args)
    print(json.dumps({"role": args.role, "rank": args.rank, **result}), flush=True)


if __name__ == "__main__":
    main()
