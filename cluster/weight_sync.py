"""Weight sync from learner rank 0 to the rollout workers: bucketed broadcast, versioned.

Two paths, both moving a few flat buffers (dllm.weights), never one message per parameter and
never pickled tensors:
- collective: a process group of its own (learner rank 0 as root + every rollout worker), built
  directly on a TCPStore so it is independent of the learners' gradient group and can be rebuilt
  whenever rollout membership changes (a new `epoch` prefix each time). gloo on CPU, NCCL on GPU.
- object store: the buckets as numpy arrays put once into Ray's object store; used by a worker
  that joins mid-run, and as a fallback backend. Receivers get zero-copy views.

The collective path is a pipeline of messages (dllm.weights.message_ranges): the root sends large
tensors straight from their storage and packs small ones into a few reused staging buffers while
earlier messages are on the wire; receivers post every receive at once, into their model's own
flat weight buffers (`receive_into` + dllm.weights.FlatWeights) or into fresh buffers
(`receive_weights`). Shape for several receivers: gloo's broadcast is a binomial tree that sends
each whole message log2(N+1) times from the root, so with 2+ gloo receivers the members form a
chain instead (rank r receives from r-1 and forwards each message to r+1 while the next arrives):
every link carries the weights once. NCCL's broadcast is already pipelined: used as is.

Every member binds its store, gloo device and NCCL sockets to its own endpoint (cluster.network):
the node's address and the interface holding it, never what the hostname resolves to.
This module holds no Ray actors; cluster/actors.py calls it on both sides.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cluster import network
from dllm.weights import (
    FlatWeights,
    WeightBucket,
    message_ranges,
    pack_bucket,
    pack_range,
    plan_buckets,
    source_view,
    to_numpy,
)


def free_port(host: str | None = None) -> int:
    """A TCP port nobody listens on at `host` right now (the store binds it a moment later);
    `host` defaults to this node's address inside Ray, else loopback."""
    if host is None:
        import ray

        host = network.node_address() if ray.is_initialized() else "127.0.0.1"
    return network.free_port(host)


@dataclass(frozen=True)
class SyncGroupSpec:
    """Everything a member needs to join one epoch of the broadcast group (same for all members)."""

    host: str  # address of the TCPStore: the root's node address
    port: int
    world_size: int  # 1 root + number of rollout receivers
    epoch: int  # bumped whenever membership changes; prefixes the store keys
    backend: str  # "gloo" or "nccl"
    timeout_s: float = 120.0
    shape: str = "auto"  # "auto", "broadcast" or "chain" (auto: chain for gloo with 2+ receivers)
    chunk_mb: int = 32  # largest message
    solo_mb: int = 1  # tensors at least this large travel alone, from their own storage
    # gloo worker threads: each message costs a round trip (the receiver announces its buffer),
    # and with gloo's default of 2 those round trips serialise (8: 10-30 ms less for 84 MB).
    gloo_threads: int = 8

    @property
    def resolved_shape(self) -> str:
        if self.shape not in ("auto", "broadcast", "chain"):
            raise ValueError(f"unknown broadcast shape {self.shape!r}")
        if self.shape != "auto":
            return self.shape
        return "chain" if self.backend == "gloo" and self.world_size > 2 else "broadcast"


class SyncGroup:
    """One member's handle on a broadcast group (rank 0 is the learner).

    `address` / `interface`: this member's own endpoint (cluster.network.resolve): by default the
    node's address as Ray knows it, or the interface override from the config."""

    def __init__(
        self,
        spec: SyncGroupSpec,
        rank: int,
        device: torch.device,
        address: str | None = None,
        interface: str | None = None,
    ) -> None:
        timeout = timedelta(seconds=spec.timeout_s)
        self.spec, self.rank, self.device = spec, rank, torch.device(device)
        self.endpoint = network.resolve(spec.host if rank == 0 and address is None else address, interface)
        self.shape = spec.resolved_shape
        self._staging: dict[torch.dtype, tuple[int, deque[torch.Tensor]]] = {}
        self._store = dist.TCPStore(
            spec.host, spec.port, spec.world_size, is_master=(rank == 0), timeout=timeout
        )
        store = dist.PrefixStore(f"weights-epoch-{spec.epoch}/", self._store)
        if spec.backend == "nccl":
            network.pin_sockets(self.endpoint, override=interface is not None)
            self._pg = dist.ProcessGroupNCCL(store, rank, spec.world_size, timeout=timeout)
        elif spec.backend == "gloo":
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._threads = spec.gloo_threads
            options._devices = [network.gloo_device(self.endpoint)]
            self._pg = dist.ProcessGroupGloo(store, rank, spec.world_size, options)
        else:
            raise ValueError(f"unknown weight-sync backend {spec.backend!r}")

    def broadcast(self, tensor: torch.Tensor) -> None:
        self.broadcast_async(tensor).wait()

    def broadcast_async(self, tensor: torch.Tensor):
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self._pg.broadcast([tensor], opts)

    def send_async(self, tensor: torch.Tensor, dst: int, tag: int):
        return self._pg.send([tensor], dst, tag)

    def recv_async(self, tensor: torch.Tensor, src: int, tag: int):
        return self._pg.recv([tensor], src, tag)

    def staging(self, dtype: torch.dtype, numel: int, count: int = 3) -> deque[torch.Tensor]:
        """`count` reused buffers of at least `numel` elements per dtype, on the group's device
        (made and touched once per group, not once per sync; at most one chunk each)."""
        capacity, pool = self._staging.get(dtype, (0, None))
        if pool is None or capacity < numel:
            # A pool still lending buffers is replaced here; they go back to it, then are freed.
            pool = deque(torch.zeros(numel, dtype=dtype, device=self.device) for _ in range(count))
            self._staging[dtype] = (numel, pool)
        return pool

    def messages(self, bucket: WeightBucket) -> list[tuple[int, int]]:
        return message_ranges(bucket, self.spec.chunk_mb * 2**20, self.spec.solo_mb * 2**20)

    def close(self) -> None:
        # Dropping the references tears the group down; gloo has no explicit abort on CPU.
        self._pg = None
        self._store = None
        self._staging = {}


# The learner side passes a state dict: its module's own, or (sharded learners) a gathered copy.
StateDict = dict[str, torch.Tensor]


def plan_for(state: StateDict, bucket_mb: int) -> list[WeightBucket]:
    return plan_buckets(state.items(), bucket_bytes=bucket_mb * 2**20)


@torch.no_grad()
def send_weights(group: SyncGroup, state: StateDict, buckets: list[WeightBucket]) -> int:
    """Root side: send every bucket, message by message, packing the next message while earlier
    ones are on the wire; returns bytes sent per receiver. `state` must not change until it
    returns (large tensors are sent from their own storage)."""
    in_flight: deque = deque()  # (work, staging buffer or None), oldest first
    sent = 0
    tag = 0
    for bucket in buckets:
        messages = group.messages(bucket)
        pool = None  # staging buffers are made only if some message must be packed
        for start, stop in messages:
            payload = source_view(bucket, state, start, stop, group.device)
            staged = None
            if payload is None:
                if pool is None:
                    pool = group.staging(bucket.torch_dtype, max(b - a for a, b in messages))
                staged = _free_buffer(pool, in_flight)
                payload = pack_range(bucket, state, start, stop, staged)
            work = group.broadcast_async(payload) if group.shape == "broadcast" else group.send_async(payload, 1, tag)
            in_flight.append((work, staged, pool))
            tag += 1
        sent += bucket.nbytes
    while in_flight:
        work, staged, pool = in_flight.popleft()
        work.wait()
        if staged is not None:
            pool.append(staged)
    return sent


def _free_buffer(pool: deque, in_flight: deque) -> torch.Tensor:
    """A staging buffer nobody is sending from: wait for the oldest messages until one is free."""
    while not pool:
        work, staged, owner = in_flight.popleft()
        work.wait()
        if staged is not None:
            owner.append(staged)
    return pool.popleft()


@torch.no_grad()
def receive_into_buffers(group: SyncGroup, buckets: list[WeightBucket], flats: list[torch.Tensor]) -> int:
    """Receiver side: fill `flats` (one 1-D buffer per bucket, on the group's device) with the
    root's weights; every receive is posted before the first wait. Returns bytes received."""
    if len(flats) != len(buckets):
        raise ValueError(f"{len(buckets)} bucket plans but {len(flats)} buffers")
    views = []
    for bucket, flat in zip(buckets, flats, strict=True):
        if flat.numel() != bucket.numel or flat.dtype != bucket.torch_dtype:
            raise ValueError(f"buffer {tuple(flat.shape)} {flat.dtype} does not fit bucket "
                             f"({bucket.numel},) {bucket.dtype}")
        views += [flat[start:stop] for start, stop in group.messages(bucket)]
    if group.shape == "broadcast":
        for work in [group.broadcast_async(v) for v in views]:
            work.wait()
    else:
        last = group.rank == group.spec.world_size - 1
        receives = [group.recv_async(v, group.rank - 1, tag) for tag, v in enumerate(views)]
        forwards = []
        for tag, (work, view) in enumerate(zip(receives, views, strict=True)):
            work.wait()
            if not last:  # forward from the buffer it landed in, while the next one arrives
                forwards.append(group.send_async(view, group.rank + 1, tag))
        for work in forwards:
            work.wait()
    return sum(b.nbytes for b in buckets)


@torch.no_grad()
def receive_into(group: SyncGroup, buckets: list[WeightBucket], weights: FlatWeights) -> int:
    """Receiver side, zero-copy: fill `weights.targets()` (the spare set, or the live weights
    when FlatWeights has no spare). The caller then calls `weights.commit()` under the worker's
    lock, with the new version; a failure here leaves a spare set half-filled and the model as
    it was. Returns bytes received."""
    if weights.buckets != buckets:
        raise ValueError("FlatWeights was laid out for another bucket plan: rebuild it")
    return receive_into_buffers(group, buckets, weights.targets())


@torch.no_grad()
def receive_weights(group: SyncGroup, buckets: list[WeightBucket]) -> list[torch.Tensor]:
    """Receiver side: fresh buffers filled by the broadcast (loaded into the model afterwards,
    all at once, so generation never sees half an update)."""
    flats = [torch.empty(b.numel, dtype=b.torch_dtype, device=group.device) for b in buckets]
    receive_into_buffers(group, buckets, flats)
    return flats


def numpy_buckets(state: StateDict, buckets: list[WeightBucket]) -> list:
    """The object-store path: numpy views of the packed buckets (bf16 travels as int16 bits)."""
    return [to_numpy(pack_bucket(b, state)) for b in buckets]


class WeightPublisher:
    """Driver side of weight sync: pushes learner rank 0's weights to a set of rollout actors.

    Used by the controller (and the pipeline benchmark) with actor handles; the broadcast group is
    rebuilt whenever the set of receivers changes (a new epoch), so workers can join and leave.
    """

    def __init__(self, learner, buckets: list[WeightBucket], backend: str) -> None:
        if backend not in ("collective", "object_store"):
            raise ValueError(f"unknown weight-sync backend {backend!r}")
        self.learner, self.buckets, self.backend = learner, buckets, backend
        self.epoch = 0
        self._members: tuple[str, ...] | None = None

    def invalidate(self) -> None:
        """Membership changed: rebuild the broadcast group before the next push."""
        self._members = None

    def push(self, receivers: dict, version: int) -> int:
        """Send `version` to every receiver (name -> actor handle); returns bytes per receiver."""
        import ray

        names = sorted(receivers)
        if self.backend == "object_store" or not names:
            self.push_object_store(receivers, version)
            return sum(b.nbytes for b in self.buckets)
        if self._members != tuple(names):
            self._rebuild(receivers, names)
        refs = [receivers[n].receive_weights.remote(version) for n in names]
        send = self.learner.send_weights.remote()
        # Wait for every side, the learner included, before reporting a failure: a receiver that
        # died leaves the broadcast to time out on the others, and retrying earlier would queue
        # behind it. The group is rebuilt on the next push.
        errors, sent = [], None
        for ref in [send, *refs]:
            try:
                result = ray.get(ref)
                sent = result if ref is send else sent
            except ray.exceptions.RayError as err:
                errors.append(err)
        if errors:
            self.invalidate()
            raise errors[0]
        return sent["bytes"]

    def push_object_store(self, receivers: dict, version: int) -> None:
        """Numpy buckets put once, read zero-copy by each receiver (late joiners, fallback)."""
        import ray

        payload = self.learner.numpy_weights.remote()
        ray.get([actor.load_numpy_weights.remote(version, payload) for actor in receivers.values()])

    def _rebuild(self, receivers: dict, names: list[str]) -> None:
        import ray

        self.epoch += 1
        spec = ray.get(self.learner.sync_endpoint.remote(self.epoch, len(names) + 1))
        refs = [self.learner.join_sync.remote(spec)]
        refs += [receivers[n].join_sync.remote(spec, i + 1, self.buckets) for i, n in enumerate(names)]
        ray.get(refs)
        self._members = tuple(names)


__all__ = [
    "WeightPublisher",
    "SyncGroup",
    "SyncGroupSpec",
    "free_port",
    "numpy_buckets",
    "plan_for",
    "receive_into",
    "receive_into_buffers",
    "receive_weights",
    "send_weights",
]
