"""The rollout dispatcher: requests out to rollout actors, `RolloutBatch`es back, with deadlines.

A request is a shard of whole GRPO groups (prompts x G samples) sent to one rollout actor. Nothing
waits forever: every wait has a deadline; a request whose actor dies or runs late is dispatched
once more to another actor, and after that it is dropped with a reason, counted in the run's
`accounting` (owned by the training loop) so that generated = trained + dropped always balances.
Scoring is cluster/scoring.py; this module does not score or assemble batches.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from cluster.contracts import RolloutBatch, RolloutRequest

log = logging.getLogger("bgpo.stream")


@dataclass
class Inflight:
    request: RolloutRequest
    worker: str
    ref: ray.ObjectRef
    submitted: float = field(default_factory=time.monotonic)


class RolloutDispatcher:
    """Round-robin dispatch over a `RolloutPool`. `collect` records what it generated, re-dispatched
    and lost into the caller's `accounting` (the training loop owns it)."""

    def __init__(self, rollouts, *, timeout_s: float, on_dead_worker: Callable[[str], object],
                 max_attempts: int = 2) -> None:
        self.rollouts = rollouts
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self.on_dead_worker = on_dead_worker  # callback(name): replaces the actor (weights loaded)
        self._turn = 0

    def _pick_worker(self, avoid: str | None = None) -> str:
        names = self.rollouts.names()
        if not names:
            raise RuntimeError("no rollout workers left")
        for _ in range(len(names)):
            name = names[self._turn % len(names)]
            self._turn += 1
            if name != avoid or len(names) == 1:
                return name
        return names[0]

    def submit(self, request: RolloutRequest, avoid: str | None = None) -> Inflight:
        worker = self._pick_worker(avoid)
        request.attempts += 1
        ref = self.rollouts.actors[worker].generate.remote(request)
        return Inflight(request, worker, ref)

    def in_flight(self, inflight: list[Inflight]) -> int:
        """Requests among `inflight` not finished yet (the dashboard's queue depth)."""
        if not inflight:
            return 0
        done, _ = ray.wait([f.ref for f in inflight], num_returns=len(inflight), timeout=0)
        return len(inflight) - len(done)

    def collect(self, inflight: list[Inflight], accounting: Counter) -> list[RolloutBatch]:
        """Outputs of every request that finishes (possibly after one re-dispatch), in the order
        the requests were made, whatever order they finish in: the batch's row order (and so the
        MC masks each row gets) must not depend on timing."""
        order = {id(f.request): i for i, f in enumerate(inflight)}
        pending = list(inflight)
        outputs: list[tuple[int, RolloutBatch]] = []
        while pending:
            deadline = min(f.submitted for f in pending) + self.timeout_s
            ready, _ = ray.wait([f.ref for f in pending], num_returns=1, timeout=max(deadline - time.monotonic(), 0))
            if not ready:  # the oldest request ran past its deadline
                late = min(pending, key=lambda f: f.submitted)
                pending.remove(late)
                log.warning("rollout request of step %d on %s is late (> %.0fs); replacing the worker",
                            late.request.step, late.worker, self.timeout_s)
                # A worker past its deadline is presumed wedged: it is killed and replaced, so the
                # next steps do not queue behind it.
                self.on_dead_worker(late.worker)
                self._retry_or_drop(late, pending, "late", accounting)
                continue
            done = next(f for f in pending if f.ref == ready[0])
            pending.remove(done)
            try:
                outputs.append((order[id(done.request)], ray.get(done.ref)))
                if not done.request.eval:
                    accounting["generated"] += done.request.num_samples
            except ray.exceptions.RayActorError:
                log.warning("rollout actor %s died during step %d; replacing it", done.worker, done.request.step)
                self.on_dead_worker(done.worker)
                self._retry_or_drop(done, pending, "worker_died", accounting)
        return [out for _, out in sorted(outputs, key=lambda pair: pair[0])]

    def _retry_or_drop(self, failed: Inflight, pending: list[Inflight], reason: str,
                       accounting: Counter) -> None:
        if failed.request.attempts < self.max_attempts:
            pending.append(self.submit(failed.request, avoid=failed.worker))
            accounting[f"redispatched/{reason}"] += failed.request.num_samples
        else:
            log.warning("dropping %d samples of step %d (%s)", failed.request.num_samples, failed.request.step, reason)
            # Never generated from the learner's point of view, but counted so nothing vanishes.
            accounting[f"lost/{reason}"] += failed.request.num_samples
