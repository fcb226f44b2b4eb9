"""The trajectory stream: prompts out to rollout actors, completions through verifiers, scored
groups back to the controller.

A request is a shard of whole GRPO groups (prompts x G samples) sent to one rollout actor. Nothing
waits forever: every wait has a deadline; a request whose actor dies or runs late is dispatched
once more to another actor, and after that it is dropped with a reason, counted in `accounting`
so that generated = trained + dropped always balances. Scoring goes round-robin over the verifier
actors in chunks; a verifier that dies is replaced and its chunk scored again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import ray

log = logging.getLogger("bgpo.stream")


@dataclass
class RolloutRequest:
    step: int  # the RL step whose batch this request fills (-1 for evaluation)
    prompts: list[list[int]]  # token ids per prompt, unpadded
    item_indices: list[int]  # dataset row of each prompt
    group_ids: list[int]  # global GRPO group id per prompt
    group_size: int  # G
    seed: int  # sampling seed (deterministic per step and shard)
    eval: bool = False
    old_terms: dict | None = None  # {n_t, seed, micro_batch_size}: behaviour-policy ell_old (async)
    attempts: int = 0  # dispatches so far

    def payload(self) -> dict:
        return {
            "prompts": self.prompts,
            "item_indices": self.item_indices,
            "group_ids": self.group_ids,
            "group_size": self.group_size,
            "seed": self.seed,
            "eval": self.eval,
            "old_terms": self.old_terms,
        }

    @property
    def num_samples(self) -> int:
        return len(self.prompts) * self.group_size


@dataclass
class Inflight:
    request: RolloutRequest
    worker: str
    ref: ray.ObjectRef
    submitted: float = field(default_factory=time.monotonic)


class RolloutStream:
    def __init__(self, rollouts, verifiers, *, task: str, rows: list[dict], timeout_s: float,
                 on_dead_worker, max_attempts: int = 2) -> None:
        self.rollouts, self.verifiers = rollouts, verifiers
        self.task, self.rows = task, rows
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self.on_dead_worker = on_dead_worker  # callback(name) -> replaces the actor (weights loaded)
        self.accounting: Counter = Counter()  # generated, trained, dropped/<reason>
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
        ref = self.rollouts.actors[worker].generate.remote(request.payload())
        return Inflight(request, worker, ref)

    def collect(self, inflight: list[Inflight]) -> list[dict]:
        """Outputs of every request that finishes (possibly after one re-dispatch), in the order
        the requests were made, whatever order they finish in: the batch's row order (and so the
        MC masks each row gets) must not depend on timing."""
        order = {id(f.request): i for i, f in enumerate(inflight)}
        pending = list(inflight)
        outputs: list[tuple[int, dict]] = []
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
                self._retry_or_drop(late, pending, "late")
                continue
            done = next(f for f in pending if f.ref == ready[0])
            pending.remove(done)
            try:
                outputs.append((order[id(done.request)], ray.get(done.ref)))
                if not done.request.eval:
                    self.accounting["generated"] += done.request.num_samples
            except ray.exceptions.RayActorError:
                log.warning("rollout actor %s died during step %d; replacing it", done.worker, done.request.step)
                self.on_dead_worker(done.worker)
                self._retry_or_drop(done, pending, "worker_died")
        return [out for _, out in sorted(outputs, key=lambda pair: pair[0])]

    def _retry_or_drop(self, failed: Inflight, pending: list[Inflight], reason: str) -> None:
        if failed.request.attempts < self.max_attempts:
            pending.append(self.submit(failed.request, avoid=failed.worker))
            self.accounting[f"redispatched/{reason}"] += failed.request.num_samples
        else:
            log.warning("dropping %d samples of step %d (%s)", failed.request.num_samples, failed.request.step, reason)
            # Never generated from the learner's point of view, but counted so nothing vanishes.
            self.accounting[f"lost/{reason}"] += failed.request.num_samples

    def score(self, rollouts: list, chunk: int = 64) -> list[dict]:
        """Reward dicts (score, status, ...) in rollout order."""
        requests = [
            {"task": self.task, "completion": r.text, "item": self.rows[r.item_index]} for r in rollouts
        ]
        chunks = [requests[i : i + chunk] for i in range(0, len(requests), chunk)]
        refs = []
        for part in chunks:
            name, actor = self.verifiers.next()
            refs.append((name, part, actor.score.remote(part)))
        results: list[dict] = []
        for name, part, ref in refs:
            results.extend(self._score_chunk(name, part, ref))
        return results

    def _score_chunk(self, name: str, part: list[dict], ref) -> list[dict]:
        for attempt in range(self.max_attempts):
            try:
                return ray.get(ref, timeout=self.timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                log.warning("verifier %s failed (%s); replacing it", name, type(err).__name__)
                self.verifiers.replace(name)
                if attempt + 1 < self.max_attempts:
                    name, actor = self.verifiers.next()
                    ref = actor.score.remote(part)
        # Scoring failed twice: these samples get no reward and must not be trained on.
        return [{"score": float("nan"), "status": "error", "detail": "verifier unavailable"} for _ in part]
