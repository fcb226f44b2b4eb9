"""What crosses actor boundaries: typed dataclasses, never dicts.

A `RolloutRequest` goes from the controller to one rollout actor (a shard of whole GRPO groups);
a `RolloutBatch` comes back (the rollouts, the actor's busy interval and, in asynchronous mode,
the behaviour policy's MC masks and ell_old). Rewards come back from verifier actors as
`rewards.RewardResult`s. Everything is picklable by Ray as it is; numpy arrays travel zero-copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rollout.types import Rollout

if TYPE_CHECKING:  # annotations only: the contracts load without torch (light actors, tools)
    from learner.behaviour import BehaviourTerms, MaskSpec


@dataclass
class RolloutRequest:
    """Whole GRPO groups for one rollout actor: `group_size` samples per prompt."""

    step: int  # the RL step whose batch this request fills (-1 for evaluation)
    prompts: list[list[int]]  # token ids per prompt, unpadded
    item_indices: list[int]  # dataset row of each prompt
    group_ids: list[int]  # global GRPO group id per prompt
    group_size: int  # G
    seed: int  # sampling seed of the step; each sample's noise derives from (seed, group, index)
    eval: bool = False  # decode with the eval sampling settings
    behaviour: MaskSpec | None = None  # asynchronous mode: compute masks and ell_old on the actor
    attempts: int = 0  # dispatches so far (the dispatcher's bookkeeping)

    @property
    def num_samples(self) -> int:
        return len(self.prompts) * self.group_size


@dataclass
class RolloutBatch:
    """A rollout actor's answer to one request, rollouts in prompt-major order."""

    rollouts: list[Rollout]
    worker_id: str  # e.g. "rollout-3"
    started: float  # time.time() on the actor when generation began
    finished: float  # time.time() on the actor when it ended (behaviour terms included)
    behaviour: BehaviourTerms | None = None  # rows line up with `rollouts`

    @property
    def seconds(self) -> float:
        return self.finished - self.started
