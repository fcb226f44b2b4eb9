"""Weight sync from learner rank 0 to the rollout workers: bucketed broadcast, versioned.

Two paths, both moving a few flat buffers (dllm.weights), never one message per parameter and
never pickled tensors:
- collective: a process group of its own (learner rank 0 as root + every rollout worker), built
  directly on a TCPStore so it is independent of the learners' gradient group and can be rebuilt
  whenever rollout membership changes (a new `epoch` prefix each time). gloo on CPU, NCCL on GPU.
- object store: the buckets as numpy arrays put once into Ray's object store; used by a worker
  that joins mid-run, and as a fallback backend. Receivers get zero-copy views.
This module holds no Ray actors; cluster/actors.py calls it on both sides.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dllm.weights import WeightBucket, pack_bucket, plan_buckets, to_numpy


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the store binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class SyncGroupSpec:
    """Everything a member needs to join one epoch of the broadcast group."""

    host: str  # address of the TCPStore, on the root's node
    port: int
    world_size: int  # 1 root + number of rollout receivers
    epoch: int  # bumped whenever membership changes; prefixes the store keys
    backend: str  # "gloo" or "nccl"
    timeout_s: float = 120.0


class SyncGroup:
    """One member's handle on a broadcast group (rank 0 is the learner)."""

    def __init__(self, spec: SyncGroupSpec, rank: int, device: torch.device) -> None:
        timeout = timedelta(seconds=spec.timeout_s)
        self.spec, self.rank, self.device = spec, rank, device
        self._store = dist.TCPStore(
            spec.host, spec.port, spec.world_size, is_master=(rank == 0), timeout=timeout
        )
        store = dist.PrefixStore(f"weights-epoch-{spec.epoch}/", self._store)
        if spec.backend == "nccl":
            self._pg = dist.ProcessGroupNCCL(store, rank, spec.world_size, timeout=timeout)
        elif spec.backend == "gloo":
            self._pg = dist.ProcessGroupGloo(store, rank, spec.world_size, timeout)
        else:
            raise ValueError(f"unknown weight-sync backend {spec.backend!r}")

    def broadcast(self, tensor: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self._pg.broadcast([tensor], opts).wait()

    def close(self) -> None:
        # Dropping the references tears the group down; gloo has no explicit abort on CPU.
        self._pg = None
        self._store = None


# The learner side passes a state dict: its module's own, or (sharded learners) a gathered copy.
StateDict = dict[str, torch.Tensor]


def plan_for(state: StateDict, bucket_mb: int) -> list[WeightBucket]:
    return plan_buckets(state.items(), bucket_bytes=bucket_mb * 2**20)


@torch.no_grad()
def send_weights(group: SyncGroup, state: StateDict, buckets: list[WeightBucket]) -> int:
    """Root side: pack and broadcast every bucket; returns bytes sent per receiver."""
    sent = 0
    for bucket in buckets:
        flat = pack_bucket(bucket, state).to(group.device)  # a gathered copy may sit on the CPU
        group.broadcast(flat)
        sent += bucket.nbytes
    return sent


@torch.no_grad()
def receive_weights(group: SyncGroup, buckets: list[WeightBucket]) -> list[torch.Tensor]:
    """Receiver side: fresh buffers filled by the broadcast (loaded into the model afterwards,
    all at once, so generation never sees half an update)."""
    flats = []
    for bucket in buckets:
        flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=group.device)
        group.broadcast(flat)
        flats.append(flat)
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
    "receive_weights",
    "send_weights",
]
