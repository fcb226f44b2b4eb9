"""The Controller actor: owns the RL loop of one run, from set-up to the last checkpoint.

One step (bgpo.md section 5, distributed): prompts -> rollout actors (whole GRPO groups) ->
verifier actors -> advantages and MC masks -> learner group (one optimizer step) -> bucketed
weight broadcast to every rollout actor (policy version v+1). With `max_staleness` k >= 1 the
rollouts of the next k steps are dispatched before the learner trains, so generation overlaps
training, and every sample's "old" ELBO terms come from the behaviour policy that generated it
(computed on the rollout actor under masks drawn there), so the bound stays a true lower bound.
Scale requests (`bgpo scale`) are applied between steps.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from pathlib import Path

import ray

from cluster.config import RunConfig, dump_config
from cluster.data import PromptSource
from cluster.metrics import DashboardSeries, MetricsLog, console_line
from cluster.stream import RolloutRequest, RolloutStream
from cluster.training_batch import assemble_batch, draw_step_masks, shard_batch
from cluster.world import World

log = logging.getLogger("bgpo.controller")


class Controller:
    def __init__(self, config: dict, resume: str | None = None) -> None:
        self.config = RunConfig.model_validate(config)
        self.config_dict = config
        self.resume = resume
        self.run_dir = Path(self.config.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.resolved.yaml").write_text(dump_config(self.config))
        self.series = DashboardSeries()
        self._scale_requests: queue.Queue = queue.Queue()
        self.step = 0
        self.version = 0
        self.status_line = "starting"
        self._stop_requested = False

    def __repr__(self) -> str:
        return f"Controller({self.config.run_name}, step={self.step}, v={self.version})"

    # ---- called by `bgpo scale` and `bgpo status` while run() goes on (threaded actor) --------

    def scale(self, rollout_workers: int) -> dict:
        if rollout_workers < 1:
            raise ValueError("rollout_workers must be >= 1")
        self._scale_requests.put(rollout_workers)
        return {"queued": rollout_workers, "step": self.step}

    def stop(self) -> dict:
        """Finish the current step, then evaluate, checkpoint and end the run as if it were done."""
        self._stop_requested = True
        return {"stopping_after_step": self.step + 1}

    def status(self) -> dict:
        world = getattr(self, "world", None)
        rollouts = world.rollouts.names() if world else []
        joining = sorted(world.rollouts.joining) if world else []
        return {"step": self.step, "version": self.version, "rollout_workers": rollouts,
                "rollout_joining": joining, "status": self.status_line}

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.config
        self.series.phase("setup")
        world = self.world = World(cfg, self.config_dict, self.run_dir, log=self._print)
        start_step, cursor = world.restore_or_warm_start(self.resume)
        self.step = self.version = start_step
        source = PromptSource(len(world.train_rows), cfg.seed, cursor=cursor)
        stream = RolloutStream(
            world.rollouts, world.verifiers, task=cfg.task.name, rows=world.train_rows,
            timeout_s=cfg.trainer.rollout_timeout_s, on_dead_worker=world.replace_rollout,
        )
        stream.accounting.update(world.restored_accounting)
        world.sync_weights(self.version)
        metrics = MetricsLog(self.run_dir, tensorboard=cfg.tracking.tensorboard, wandb=cfg.tracking.wandb,
                             config=self.config_dict, resume_step=start_step if start_step else None)
        summary = {"run_dir": str(self.run_dir), "start_step": start_step}
        if start_step == 0:
            self.series.phase("eval")
            summary["before"] = world.evaluate(self.version)
            self._print(f"[eval] before RL (v{self.version}): {summary['before']}")
            metrics.log(0, {f"eval/{k}": v for k, v in summary["before"].items()})

        k = cfg.trainer.max_staleness
        total = cfg.trainer.total_steps
        inflight: deque = deque()
        next_gen = start_step
        # The data cursor as it was before each step's prompts were taken: a checkpoint after step
        # s saves the cursor of step s+1, so prompts in flight are drawn again after a resume.
        cursor_at: dict[int, dict] = {}
        started = time.time()
        for step in range(start_step, total):
            if self._stop_requested:
                self._print(f"[stop] stopping after step {self.step} as requested")
                break
            self._apply_scale_requests(world)
            t0 = time.perf_counter()
            while next_gen < total and next_gen <= step + k:
                cursor_at[next_gen] = source.state()
                inflight.append((next_gen, self._dispatch(world, stream, source, next_gen)))
                next_gen += 1
            self.series.phase("rollout")
            _, requests = inflight.popleft()
            outputs = stream.collect(requests)
            t_rollout = time.perf_counter() - t0
            self.series.phase("reward")
            batch, info, extras = assemble_batch(outputs, stream, world, step=step, version=self.version, max_staleness=k)
            t_reward = time.perf_counter() - t0 - t_rollout
            if batch is None:
                self._print(f"step {step + 1}: no trainable samples ({info}); skipping the update")
                continue
            if batch.masks is None and cfg.learner.objective != "diffu_grpo":
                batch.masks = draw_step_masks(len(batch), cfg.learner.n_t, batch.response_length, cfg.seed, step)
            self.series.phase("train")
            shards = shard_batch(batch, len(world.learners))
            try:
                train = ray.get([a.train_step.remote(s) for a, s in zip(world.learners, shards, strict=True)])
            except ray.exceptions.RayActorError:
                self._print(f"[fatal] a learner rank died in step {step + 1}; the run stops. Resume from "
                            f"the last checkpoint with --resume auto (checkpoint.every={cfg.checkpoint.every})")
                raise
            t_train = time.perf_counter() - t0 - t_rollout - t_reward
            stream.accounting["trained"] += len(batch)
            self.version += 1
            self.step = step + 1
            self.series.phase("weight_sync")
            sync = world.sync_weights(self.version)
            values = {**info, **train[0], **sync, "perf/learner_busy_seconds": train[0].get("perf/step_seconds", 0.0),
                      "time/rollout": t_rollout, "time/reward": t_reward, "time/train": t_train,
                      "time/step": time.perf_counter() - t0,
                      "perf/rollout_tokens_per_s": info["rollout/tokens"] / max(t_rollout, 1e-9)}
            values.update({f"accounting/{key}": n for key, n in stream.accounting.items()})
            if cfg.trainer.eval_every and self.step % cfg.trainer.eval_every == 0 and self.step < total:
                values.update({f"eval/{key}": v for key, v in world.evaluate(self.version).items()})
            metrics.log(self.step, values)
            self._update_series(values, extras)
            self._print(console_line(self.step, total, values, started, start_step))
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                world.checkpoint(self.step, cursor_at.get(self.step, source.state()), stream.accounting)
            cursor_at.pop(step, None)
        for _, requests in inflight:  # rollouts for steps past the end are generated but unused
            outputs = stream.collect(requests)
            stream.accounting["dropped/run_ended"] += sum(len(o["rollouts"]) for o in outputs)
        self.series.phase("eval")
        summary["after"] = world.evaluate(self.version)
        self._print(f"[eval] after RL (v{self.version}): {summary['after']}")
        metrics.log(self.step, {f"eval/{k}": v for k, v in summary["after"].items()})
        summary["checkpoint"] = world.checkpoint(self.step, source.state(), stream.accounting)
        summary["accounting"] = dict(stream.accounting)
        summary["steps"] = self.step
        metrics.close()
        self.series.phase("done")
        world.write_summary(summary)
        return summary

    def _dispatch(self, world, stream: RolloutStream, source: PromptSource, step: int) -> list:
        """Requests for `step`: B prompts in whole groups, split across the rollout actors."""
        cfg = self.config
        indices = source.take(cfg.trainer.prompts_per_step)
        shards = world.split_prompts(indices, len(world.rollouts.names()))
        requests = []
        for shard_no, shard in enumerate(shards):
            old = None
            if cfg.trainer.max_staleness > 0 and cfg.learner.objective != "diffu_grpo":
                old = {"n_t": cfg.learner.n_t, "seed": hash((cfg.seed, step, shard_no)) % 2**31,
                       "micro_batch_size": cfg.learner.micro_batch_size}
            request = RolloutRequest(
                step=step,
                prompts=[world.train_prompt_ids[i] for i in shard],
                item_indices=shard,
                group_ids=[step * cfg.trainer.prompts_per_step + indices.index(i) for i in shard],
                group_size=cfg.rollout.group_size,
                seed=(cfg.seed * 1_000_003 + step * 101 + shard_no) % 2**31,
                old_terms=old,
            )
            requests.append(stream.submit(request))
        return requests

    def _apply_scale_requests(self, world) -> None:
        target = None
        while not self._scale_requests.empty():
            target = self._scale_requests.get_nowait()
        if target is not None:
            self._print(f"[scale] rollout workers {len(world.rollouts.names())} -> {target}")
            world.resize_rollouts(target)
        world.admit_joining()

    def _update_series(self, values: dict, extras: dict) -> None:
        self.series.step.set(self.step)
        self.series.policy_version.set(self.version, tags={"role": "learner"})
        self.series.policy_version.set(self.version, tags={"role": "rollout"})
        if "reward/mean" in values:
            self.series.reward_mean.set(values["reward/mean"])
        self.series.rollout_tokens.inc(values.get("rollout/tokens", 0))
        if "perf/weight_sync_seconds" in values:
            self.series.weight_sync_seconds.set(values["perf/weight_sync_seconds"])
        for status, count in extras["statuses"].items():
            self.series.verifier_outcomes.inc(count, tags={"task": self.config.task.name, "status": status})
        for latency in extras["latencies"]:
            self.series.verifier_latency.observe(latency)
        self.series.buffer_depth.set(values.get("rollout/buffered", 0))

    def _print(self, line: str) -> None:
        self.status_line = line
        print(line, flush=True)
