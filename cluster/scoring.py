"""Scoring rollouts on the verifier actors: chunks round-robin, deadlines, replacement.

Each chunk of completions goes to the next verifier actor; a verifier that dies or misses the
deadline is replaced and its chunk scored once more elsewhere. Completions that still get no score
come back as `RewardResult(nan, "error")`, which the batch assembly drops (counted, never trained
on). This module does not dispatch rollouts or build batches.
"""

from __future__ import annotations

import logging

import ray

from rewards.types import RewardResult
from rollout.types import Rollout

log = logging.getLogger("bgpo.scoring")


class Scorer:
    def __init__(self, verifiers, *, task: str, rows: list[dict], timeout_s: float,
                 max_attempts: int = 2, chunk: int = 64) -> None:
        self.verifiers, self.task, self.rows = verifiers, task, rows
        self.timeout_s, self.max_attempts, self.chunk = timeout_s, max_attempts, chunk

    def score(self, rollouts: list[Rollout]) -> list[RewardResult]:
        """One result per rollout, in rollout order."""
        requests = [{"task": self.task, "completion": r.text, "item": self.rows[r.item_index]} for r in rollouts]
        parts = [requests[i : i + self.chunk] for i in range(0, len(requests), self.chunk)]
        refs = []
        for part in parts:
            name, actor = self.verifiers.next()
            refs.append((name, part, actor.score.remote(part)))
        results: list[RewardResult] = []
        for name, part, ref in refs:
            results.extend(self._score_chunk(name, part, ref))
        return results

    def _score_chunk(self, name: str, part: list[dict], ref) -> list[RewardResult]:
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
        return [RewardResult(float("nan"), "error", "verifier unavailable") for _ in part]
