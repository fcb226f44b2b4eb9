"""The RL loop of one run, top to bottom, against a `Pools` interface (no Ray in this module).

One step (bgpo.md section 5, distributed): prompts -> rollout workers (whole GRPO groups) ->
verifiers -> TrainBatch (advantages over the global batch) -> learner group (one update) ->
weight sync to every rollout worker (policy version v+1). With `max_staleness` k >= 1 the rollouts
of the next k steps are dispatched before the learner trains, so generation overlaps training, and
each sample's MC masks and ell_old come from the behaviour policy that generated it (computed on the
rollout worker), so the bound stays a true lower bound.

State has one owner each: the loop owns `step`, `version` (learner updates applied; a step with
nothing to train leaves it behind `step`), the data cursor and the sample `accounting`
(generated = trained + dropped); the pools own the actors. `RayPools` (cluster/pools.py) runs it on
a cluster; tests/cluster/test_loop.py runs it against in-process fakes.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cluster.contracts import RolloutBatch, RolloutRequest
from cluster.data import DataCursor, PromptSource
from cluster.training_batch import assemble_batch, shard_batch
from learner.batch import TrainBatch
from learner.behaviour import MaskSpec
from learner.objectives import get_objective
from rewards.types import RewardResult
from rollout.types import Rollout


class Pools(Protocol):
    """What the loop asks of the cluster."""

    def rollout_workers(self) -> list[str]: ...
    def submit(self, request: RolloutRequest): ...  # -> a ticket for collect()
    # Request order, lost ones left out; generated / re-dispatched / lost counts go to `accounting`.
    def collect(self, tickets: list, accounting: Counter) -> list[RolloutBatch]: ...
    def in_flight(self, tickets: list) -> int: ...
    def score(self, rollouts: list[Rollout]) -> list[RewardResult]: ...
    def train(self, shards: list[TrainBatch]) -> dict: ...  # rank 0's metrics
    def learner_ranks(self) -> int: ...
    def sync_weights(self, version: int) -> dict: ...
    def rollout_versions(self) -> dict[str, int]: ...  # worker -> version it holds
    def evaluate(self, version: int) -> dict: ...
    def checkpoint(self, step: int, state: dict) -> str: ...
    def rescale(self) -> None: ...  # apply pending scale requests, admit workers that joined


class NoProgressError(RuntimeError):
    """The run completed no update for longer than trainer.progress_timeout_s."""


@dataclass
class LoopState:
    step: int = 0  # RL steps completed (a skipped step counts: its prompts were used)
    version: int = 0  # learner updates applied; the weights rollout workers should hold
    cursor: dict = field(default_factory=dict)  # the data cursor of the next step's prompts
    accounting: Counter = field(default_factory=Counter)  # generated, trained, dropped/<reason>


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of a step; each sample's noise then derives from (this, group, index)."""
    return (seed * 1_000_003 + step) % 2**31


class TrainingLoop:
    def __init__(self, config, pools: Pools, train_prompt_ids: list[list[int]], *, pad_id: int,
                 metrics, log: Callable[[str], None] = print, series=None) -> None:
        self.config, self.pools, self.prompt_ids = config, pools, train_prompt_ids
        self.pad_id, self.metrics, self.log, self.series = pad_id, metrics, log, series
        self.objective = get_objective(config.learner.objective)
        self.state = LoopState()
        self.stop_requested = False

    # ---- the run ---------------------------------------------------------------------------

    def run(self, state: LoopState) -> dict:
        """Train from `state` to trainer.total_steps (or a stop request); returns the summary."""
        cfg, self.state = self.config, state
        source = PromptSource(len(self.prompt_ids), cfg.seed,
                              cursor=DataCursor(**state.cursor) if state.cursor else None)
        self.pools.sync_weights(state.version)
        summary: dict = {"start_step": state.step}
        if state.step == 0:
            summary["before"] = self._evaluate("before RL")
        k, total = cfg.trainer.max_staleness, cfg.trainer.total_steps
        inflight: deque = deque()
        next_gen = state.step
        # The data cursor before each step's prompts were taken: a checkpoint after step s saves
        # the cursor of step s+1, so prompts in flight are drawn again after a resume.
        cursor_at: dict[int, dict] = {}
        started = last_update = time.monotonic()
        idle = IdleClock(lag=k)
        while state.step < total and not self.stop_requested:
            self.pools.rescale()
            t0 = time.perf_counter()
            while next_gen < total and next_gen <= state.step + k:
                cursor_at[next_gen] = source.state()
                inflight.append((next_gen, self._dispatch(source, next_gen)))
                next_gen += 1
            self._phase("rollout")
            step, tickets = inflight.popleft()
            outputs = self.pools.collect(tickets, state.accounting)
            t_rollout = time.perf_counter() - t0
            self._phase("reward")
            rollouts = [r for out in outputs for r in out.rollouts]
            results = self.pools.score(rollouts) if rollouts else []
            batch, info, extras = assemble_batch(
                outputs, results, objective=self.objective, step=step, version=state.version,
                max_staleness=k, pad_id=self.pad_id, accounting=state.accounting)
            t_reward = time.perf_counter() - t0 - t_rollout
            values = {**info, "time/rollout": t_rollout, "time/reward": t_reward,
                      "perf/queue_depth": sum(self.pools.in_flight(t) for _, t in inflight)}
            if batch is None:
                values["train/skipped_step"] = 1.0
                self.log(f"step {step + 1}: no trainable samples; skipping the update "
                         f"(accounting {dict(state.accounting)})")
            else:
                values.update(self._train(batch))
                if values["train/updated"]:
                    last_update = time.monotonic()
            state.step = step + 1
            state.cursor = cursor_at.pop(state.step, source.state())
            values["time/step"] = time.perf_counter() - t0
            values.update(idle.step(state.step, outputs, values.get("perf/learner_busy_seconds", 0.0),
                                    len(self.pools.rollout_workers())))
            values["perf/rollout_tokens_per_s"] = info["rollout/tokens"] / max(t_rollout, 1e-9)
            values.update({f"accounting/{key}": n for key, n in state.accounting.items()})
            if cfg.trainer.eval_every and state.step % cfg.trainer.eval_every == 0 and state.step < total:
                values.update({f"eval/{key}": v for key, v in self.pools.evaluate(state.version).items()})
            self.metrics.log(state.step, values)
            self._update_series(values, extras)
            self.log(console_line(state.step, total, values, started, summary["start_step"]))
            if cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0:
                self._checkpoint()
            if time.monotonic() - last_update > cfg.trainer.progress_timeout_s:
                raise NoProgressError(
                    f"no learner update for {time.monotonic() - last_update:.0f} s (trainer."
                    f"progress_timeout_s={cfg.trainer.progress_timeout_s}); last step: "
                    f"{info['rollout/samples']} samples, accounting {dict(state.accounting)}")
        if self.stop_requested:
            self.log(f"[stop] stopped after step {state.step} as requested")
        for _, tickets in inflight:  # rollouts for steps past the end are generated but unused
            outputs = self.pools.collect(tickets, state.accounting)
            state.accounting["dropped/run_ended"] += sum(len(o.rollouts) for o in outputs)
        summary["after"] = self._evaluate("after RL")
        state.cursor = source.state()
        summary["checkpoint"] = self._checkpoint()
        summary.update(accounting=dict(state.accounting), steps=state.step, version=state.version)
        self._phase("done")
        return summary

    # ---- pieces of a step ------------------------------------------------------------------

    def _dispatch(self, source: PromptSource, step: int) -> list:
        """Requests for `step`: B prompts in whole groups, split across the rollout workers."""
        cfg = self.config
        indices = source.take(cfg.trainer.prompts_per_step)
        workers = max(1, min(len(self.pools.rollout_workers()), len(indices)))
        behaviour = None
        if cfg.trainer.max_staleness > 0 and self.objective.behaviour_terms:
            behaviour = MaskSpec(cfg.learner.n_t, cfg.seed)
        tickets = []
        for shard in (list(range(w, len(indices), workers)) for w in range(workers)):
            request = RolloutRequest(
                step=step,
                prompts=[self.prompt_ids[indices[i]] for i in shard],
                item_indices=[indices[i] for i in shard],
                group_ids=[step * cfg.trainer.prompts_per_step + i for i in shard],
                group_size=cfg.rollout.group_size,
                seed=step_seed(cfg.seed, step),
                behaviour=behaviour,
            )
            tickets.append(self.pools.submit(request))
        return tickets

    def _train(self, batch: TrainBatch) -> dict:
        """One learner update, then (if the weights changed) a weight sync as version v+1."""
        state = self.state
        self._phase("train")
        before = time.perf_counter()
        train = self.pools.train(shard_batch(batch, self.pools.learner_ranks()))
        values = {**train, "time/train": time.perf_counter() - before,
                  "perf/learner_busy_seconds": train.get("perf/step_seconds", 0.0)}
        state.accounting["trained"] += len(batch)
        # A step whose every optimizer step was skipped (non-finite gradient) changes nothing.
        updated = train.get("train/skipped", 0.0) < train.get("train/inner_steps", 1.0)
        values["train/updated"] = float(updated)
        if updated:
            state.version += 1
            self._phase("weight_sync")
            values.update(self.pools.sync_weights(state.version))
        return values

    def _evaluate(self, when: str) -> dict:
        self._phase("eval")
        result = self.pools.evaluate(self.state.version)
        self.log(f"[eval] {when} (v{self.state.version}): {result}")
        self.metrics.log(self.state.step, {f"eval/{k}": v for k, v in result.items()})
        return result

    def _checkpoint(self) -> str:
        s = self.state
        return self.pools.checkpoint(s.step, {"step": s.step, "version": s.version, "cursor": s.cursor,
                                              "accounting": dict(s.accounting)})

    def _phase(self, name: str) -> None:
        if self.series is not None:
            self.series.phase(name)

    def _update_series(self, values: dict, extras: dict) -> None:
        if self.series is not None:
            self.series.update(self.state, values, extras, self.pools.rollout_versions(),
                               task=self.config.task.name)


class IdleClock:
    """Idle shares of the learner and the rollout workers, per step's wall-clock window.

    The learner is busy inside its own step, so its share is known when the step ends. A rollout
    batch that ran in a window may be collected up to `lag` (= max_staleness) steps later: the
    rollout share of window w is computed once window w + lag has ended, from every collected
    batch's [started, finished] interval (time.time() on the actor) clipped to window w, so it is
    reported `lag` steps late (as `perf/rollout_idle_window`, the step it is for)."""

    def __init__(self, lag: int, start: float | None = None) -> None:
        self.lag = lag
        self.windows: deque = deque()  # (step, start, end, workers)
        self.intervals: list[tuple[float, float]] = []
        self.start = time.time() if start is None else start

    def step(self, step: int, outputs: list[RolloutBatch], learner_busy: float, workers: int,
             now: float | None = None) -> dict:
        end = time.time() if now is None else now
        window = max(end - self.start, 1e-9)
        values = {"perf/learner_idle": max(0.0, 1.0 - learner_busy / window)}
        self.windows.append((step, self.start, end, max(workers, 1)))
        self.intervals += [(o.started, o.finished) for o in outputs]
        self.start = end
        if len(self.windows) > self.lag:
            done, lo, hi, n = self.windows.popleft()
            busy = sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in self.intervals)
            values["perf/rollout_idle"] = max(0.0, 1.0 - busy / (n * max(hi - lo, 1e-9)))
            values["perf/rollout_idle_window"] = done
            oldest = self.windows[0][1] if self.windows else end
            self.intervals = [(a, b) for a, b in self.intervals if b > oldest]
        return values


def console_line(step: int, total: int, values: dict, started: float, start_step: int = 0) -> str:
    """`step 12/40 | reward 0.61 acc 0.38 | loss -0.012 gnorm 0.41 | 850 tok/s | 4.1s/step | ETA 1m55s`."""
    per_step = (time.monotonic() - started) / max(step - start_step, 1)
    eta = per_step * max(total - step, 0)

    def fmt(key: str, spec: str) -> str:
        value = values.get(key)
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    return (
        f"step {step}/{total} | reward {fmt('reward/mean', '.3f')} acc {fmt('reward/accuracy', '.3f')}"
        f" | loss {fmt('train/loss', '+.2e')} gnorm {fmt('train/grad_norm', '.3f')}"
        f" | {fmt('perf/rollout_tokens_per_s', '.0f')} tok/s | {fmt('time/step', '.1f')}s/step"
        f" | stale {fmt('rollout/staleness_mean', '.2f')} | ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    )
