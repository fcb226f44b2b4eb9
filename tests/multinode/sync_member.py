"""One member of a weight transfer as a plain process (no Ray): the multinode tests and
benchmarks/weight_sync.py run it on the namespace hosts with `ip netns exec`.

    python tests/multinode/sync_member.py ROLE --rank R --world W --store ADDR:PORT --addr MY_ADDR ...

ROLE is `root` (rank 0, the learner: sends a deterministic float32 state dict of Llama shapes,
`--sizes small,medium,large` = 2.6, 84 and 336 MB) or `recv` (a rollout worker: a zero-filled
model of those shapes). `--variants` are measured side by side, round by round, in one process
so they see the same machine load:
- `tcp`: one plain TCP stream from rank 0 to rank 1 (`--peer`), into a touched buffer: the link;
- `gloo`: a plain ProcessGroupGloo broadcast of one buffer of the size: the collective's limit;
- `new:SHAPE`: the project's weight sync (cluster.weight_sync.send_weights / receive_into into
  FlatWeights, then commit), SHAPE auto, chain or broadcast;
- `old:broadcast`: the code it replaced (whole buckets packed, blocking broadcasts, fresh receive
  buffers, then a copy into the model).
Each timed round runs between two barriers, so it covers delivery to every receiver; after the
rounds every weight-sync variant delivers new values once more and each member records a sha1 of
its weights. `--default-device` instead builds the group as the project did before cluster.network
(gloo's default device, from the hostname), to show the failure across hosts.
The member prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
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


def _store(args, offset: int = 0):
    host, port = args.store.rsplit(":", 1)
    return dist.TCPStore(host, int(port) + offset, args.world, is_master=args.rank == 0,
                         timeout=timedelta(seconds=args.timeout))


def run_default_device(args) -> dict:
    """The group as the project built it before cluster.network: gloo's default device, which
    binds and advertises what the hostname resolves to (the negative test)."""
    pg = dist.ProcessGroupGloo(dist.PrefixStore("weights-epoch-1/", _store(args)), args.rank, args.world,
                               timedelta(seconds=args.timeout))
    _barrier(pg)
    return {"connected": True}


class _Transfers:
    """Every variant's connection between these members, set up once (port = base + index)."""

    def __init__(self, args) -> None:
        from cluster.weight_sync import SyncGroup, SyncGroupSpec

        self.args, self.groups, self.sock = args, {}, None
        # Control group (barriers) and the plain-gloo variant: bound by address, default options.
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timedelta(seconds=args.timeout)
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=args.addr)]
        self.ctl = dist.ProcessGroupGloo(_store(args), args.rank, args.world, options)
        host, port = args.store.rsplit(":", 1)
        for i, variant in enumerate(args.variants, start=1):
            if variant == "tcp":
                self.sock = self._connect(int(port) + i)
            elif ":" in variant:
                spec = SyncGroupSpec(host, int(port) + i, args.world, epoch=1, backend="gloo",
                                     timeout_s=args.timeout, shape=variant.split(":")[1], chunk_mb=args.chunk_mb,
                                     solo_mb=args.solo_mb)
                self.groups[variant] = SyncGroup(spec, args.rank, torch.device("cpu"), address=args.addr)
            elif variant != "gloo":
                raise ValueError(f"unknown variant {variant!r}")

    def _connect(self, port: int) -> socket.socket | None:
        """One TCP stream from rank 0 to rank 1 (the raw link); other ranks take no part."""
        if self.args.rank == 1:
            server = socket.create_server((self.args.addr, port))
            _barrier(self.ctl)
            conn, _ = server.accept()
            server.close()
            return conn
        _barrier(self.ctl)
        if self.args.rank == 0:
            return socket.create_connection((self.args.peer, port), timeout=self.args.timeout)
        return None

    def close(self) -> None:
        for group in self.groups.values():
            group.close()
        if self.sock is not None:
            self.sock.close()


def run_project(args) -> dict:
    """Per size: every variant, rounds interleaved (so each sees the same load), then one checked
    delivery per weight-sync variant: round times, shapes, endpoints and digests."""
    from cluster.weight_sync import plan_for

    t = _Transfers(args)
    out: dict = {v: {} for v in args.variants}
    for variant, group in t.groups.items():
        out[variant].update(shape=group.shape, endpoint=[group.endpoint.address, group.endpoint.interface])
    for size in args.sizes:
        if args.rank == 0:
            state = source_state(size, args.seed)
            buckets = plan_for(state, args.bucket_mb)
        else:
            state = receiver_module(size)
            buckets = plan_for(state.state_dict(), args.bucket_mb)
        ctx = _SizeContext(args, t, state, buckets, nbytes(size))
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        for round_ in range(args.rounds + 1):  # round 0 warms up (first touches, staging buffers)
            for variant in args.variants:
                _barrier(t.ctl)
                start = time.perf_counter()
                ctx.run(variant)
                _barrier(t.ctl)
                if round_:
                    times[variant].append(time.perf_counter() - start)
        for variant in args.variants:
            out[variant][size] = {"seconds": times[variant], "bytes": ctx.nbytes}
            if variant in t.groups:  # a delivery of values none of the earlier ones had
                if args.rank == 0:
                    for tensor in state.values():
                        tensor.add_(1.0)
                ctx.run(variant)
                _barrier(t.ctl)
                out[variant][size]["digest"] = digest(state if args.rank == 0 else state.state_dict())
    t.close()
    return out


class _SizeContext:
    """One size's state (root) or model (receivers) and the transfer each variant does."""

    def __init__(self, args, transfers: _Transfers, state, buckets: list, size_bytes: int) -> None:
        self.args, self.t, self.state, self.buckets, self.nbytes = args, transfers, state, buckets, size_bytes
        self.flat = None
        self.buffer = torch.ones(size_bytes // 4)  # plain-gloo and TCP payload, touched
        if args.rank and any(v.startswith("new:") for v in args.variants):
            from dllm.weights import FlatWeights

            self.flat = FlatWeights(state, buckets)

    def run(self, variant: str) -> None:
        if variant == "tcp":
            self._tcp()
        elif variant == "gloo":
            opts = dist.BroadcastOptions()
            opts.rootRank = 0
            self.t.ctl.broadcast([self.buffer], opts).wait()
        elif variant.startswith("new:"):
            self._new(self.t.groups[variant])
        else:
            self._old(self.t.groups[variant])

    def _tcp(self) -> None:
        view = memoryview(self.buffer.numpy()).cast("B")
        if self.args.rank == 0:
            self.t.sock.sendall(view)
            if self.t.sock.recv(1) != b"k":
                raise ConnectionError("TCP receiver did not acknowledge")
        elif self.args.rank == 1:
            got = 0
            while got < len(view):
                n = self.t.sock.recv_into(view[got:])
                if n == 0:
                    raise ConnectionError(f"TCP sender closed after {got} of {len(view)} bytes")
                got += n
            self.t.sock.sendall(b"k")

    def _new(self, group) -> None:
        from cluster.weight_sync import receive_into, send_weights

        if self.args.rank == 0:
            send_weights(group, self.state, self.buckets)
        else:
            receive_into(group, self.buckets, self.flat)
            self.flat.commit()

    def _old(self, group) -> None:
        """The code this replaced: whole buckets packed, blocking broadcasts, fresh receive
        buffers, then a copy into the model."""
        from dllm.weights import load_buckets_into, pack_bucket

        if self.args.rank == 0:
            for bucket in self.buckets:
                group.broadcast(pack_bucket(bucket, self.state))
        else:
            flats = [torch.empty(b.numel, dtype=b.torch_dtype) for b in self.buckets]
            for flat in flats:
                group.broadcast(flat)
            load_buckets_into(self.state, self.buckets, flats)


def member_command(role: str, rank: int, world: int, store: str, addr: str, *extra: str) -> list[str]:
    """The argv that runs one member (prefix it with `ip netns exec HOST` to place it)."""
    return [sys.executable, str(Path(__file__).resolve()), role, f"--rank={rank}", f"--world={world}",
            f"--store={store}", f"--addr={addr}", *extra]


def run_members(commands: list[list[str]], timeout: float, env: dict[str, str] | None = None) -> list[dict]:
    """Start every member at once, wait for all; their JSON lines in order. Fails (killing the
    rest) as soon as one exits non-zero, or if the whole exceeds `timeout`, with each member's
    stderr tail (the members left waiting for a failed peer would otherwise hold on to the end)."""
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="bgpo-members-") as tmp:
        files = [(open(f"{tmp}/{i}.out", "w+"), open(f"{tmp}/{i}.err", "w+")) for i in range(len(commands))]
        procs = [subprocess.Popen(c, stdout=out, stderr=err, text=True, env=env)
                 for c, (out, err) in zip(commands, files, strict=True)]
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if any(p.returncode for p in procs):
                    break
                time.sleep(0.05)
        finally:
            running = [p.poll() is None for p in procs]
            for proc in procs:
                proc.kill()
                proc.wait()
        outputs = []
        for out, err in files:
            out.seek(0)
            err.seek(0)
            outputs.append((out.read(), err.read()))
            out.close()
            err.close()
    failed = [(i, p.returncode, o[1][-1500:]) for i, (p, o, r) in enumerate(zip(procs, outputs, running, strict=True))
              if p.returncode and not r]
    if failed:
        raise RuntimeError(f"members failed (index, exit status, stderr): {failed}")
    if any(running):
        raise TimeoutError(f"members did not finish within {timeout:.0f} s: {[o[1][-600:] for o in outputs]}")
    return [json.loads(o[0].strip().splitlines()[-1]) for o in outputs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["root", "recv"])
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--store", required=True, help="ADDR:PORT of rank 0 (the TCP receiver for tcp-*)")
    p.add_argument("--addr", required=True, help="this member's own address")
    p.add_argument("--sizes", type=lambda s: s.split(","), default=["small"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--variants", type=lambda s: s.split(","), default=["new:auto"],
                   help="tcp, gloo, new:SHAPE, old:broadcast (SHAPE: auto, chain, broadcast)")
    p.add_argument("--peer", default="", help="rank 1's address (for the tcp variant)")
    p.add_argument("--chunk-mb", type=int, default=32)
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--solo-mb", type=int, default=1, help="tensors this large travel alone (64: pack all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--default-device", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = run_default_device(args) if args.default_device else run_project(args)
    print(json.dumps({"role": args.role, "rank": args.rank, **result}), flush=True)


if __name__ == "__main__":
    main()
