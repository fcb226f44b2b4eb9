"""The world of one run: its data, its actor pools, and the operations on them that the
controller's loop calls (warm start or restore, weight sync, evaluation, checkpoints, resizing).

Weight versions: version 0 is the policy RL starts from (after the warm start); each learner
step makes version v+1, which `sync_weights` pushes to every rollout actor. A rollout actor that
joins mid-run (scaling or replacing a dead one) first gets the current version through the object
store, then the broadcast group is rebuilt with it at the next sync.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import ray

from cluster.checkpoint import find_checkpoint, load_trainer_state
from cluster.data import (
    DataCursor,
    encode_prompts,
    generated_train_and_heldout,
    load_task_rows,
    prompt_text,
    sft_examples,
)
from cluster.evaluate import generate_and_score
from cluster.groups import RolloutPool, VerifierPool, make_learners
from cluster.policy_factory import load_tokenizer
from cluster.stream import RolloutStream
from cluster.weight_sync import WeightPublisher

log = logging.getLogger("bgpo.world")


class World:
    def __init__(self, config, config_dict: dict, run_dir: Path, *, log=print) -> None:
        self.config, self.config_dict, self.run_dir, self.log = config, config_dict, run_dir, log
        tok = load_tokenizer(config)
        self.tokenizer, self.pad_id = tok, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        task = config.task
        self.eval_sets = {"test": load_task_rows(task, "test", config.seed)}
        if task.train_path is None:
            self.train_rows, heldout = generated_train_and_heldout(task, config.seed)
            self.eval_sets["heldout"] = heldout
        else:
            self.train_rows = load_task_rows(task, "train", config.seed)
        self.train_prompt_ids = self._encode(self.train_rows)
        self.eval_prompt_ids = {name: self._encode(rows) for name, rows in self.eval_sets.items()}
        self.log(f"[setup] task {task.name}: {len(self.train_rows)} train rows, "
                 + ", ".join(f"{len(r)} {n} rows" for n, r in self.eval_sets.items()))
        self.learners = make_learners(config, config_dict)
        self.rollouts = RolloutPool(config, config_dict)
        for _ in range(config.rollout.num_workers):
            self.rollouts.add()
        self.rollouts.ready(timeout_s=600)
        if not self.rollouts.actors:
            raise RuntimeError("no rollout actor could be placed within 600 s: check rollout.num_cpus/num_gpus")
        self.verifiers = VerifierPool(config, config_dict)
        for _ in range(config.rewards.num_workers):
            self.verifiers.add()
        self.buckets = ray.get(self.learners[0].weight_plan.remote())
        self.publisher = WeightPublisher(self.learners[0], self.buckets, config.weight_sync.backend)
        self.version = 0
        self.restored_accounting: dict = {}

    def _encode(self, rows: list[dict]) -> list[list[int]]:
        task = self.config.task
        texts = [prompt_text(task.name, r, task.prompt_style, self.tokenizer, task.preset) for r in rows]
        return encode_prompts(texts, self.tokenizer)

    # ---- start -------------------------------------------------------------------------------

    def restore_or_warm_start(self, resume: str | None) -> tuple[int, DataCursor]:
        """(first step, data cursor): from a checkpoint, or after the supervised warm start."""
        path = find_checkpoint(self.run_dir, resume) if resume else None
        if resume and resume != "auto" and path is None:
            raise FileNotFoundError(f"no checkpoint at {resume}")
        if path is not None:
            ray.get([a.load_checkpoint.remote(str(path)) for a in self.learners])
            state = load_trainer_state(path)
            self.version = state["version"]
            self.restored_accounting = state.get("accounting", {})
            self.log(f"[resume] from {path} (step {state['step']}, version {state['version']})")
            return state["step"], DataCursor(**state["cursor"])
        wc = self.config.warmup
        if wc.steps > 0:
            if self.config.task.prompt_style != "compact":
                raise ValueError("the supervised warm start is for the tiny model's compact task; set warmup.steps=0")
            gen_length = self.config.rollout.sampling.gen_length
            examples = sft_examples(self.config.task.name, self.train_rows, self.tokenizer, gen_length,
                                    self.tokenizer.eos_token_id, self.pad_id)
            self.log(f"[warmup] supervised masked-diffusion warm start, {wc.steps} steps on learner-0")
            stats = ray.get(self.learners[0].warm_start.remote(examples, gen_length))
            self.log(f"[warmup] done: {stats}")
            if len(self.learners) > 1:
                payload = self.learners[0].numpy_weights.remote(exact=True)
                ray.get([a.load_numpy_weights.remote(payload) for a in self.learners[1:]])
        return 0, DataCursor()

    # ---- weights -----------------------------------------------------------------------------

    def sync_weights(self, version: int) -> dict:
        """Push the learner's weights as `version` to every rollout actor; returns timing metrics."""
        start = time.perf_counter()
        for attempt in range(2):
            try:
                sent = self.publisher.push(self.rollouts.actors, version)
                break
            except ray.exceptions.RayError as err:
                if attempt:
                    raise
                self.log(f"[sync] weight sync failed ({type(err).__name__}); replacing dead rollout actors")
                self._replace_dead_rollouts()
        self.version = version
        return {"perf/weight_sync_seconds": time.perf_counter() - start, "perf/weight_sync_bytes": sent,
                "perf/weight_sync_backend": self.config.weight_sync.backend}

    def _load_current_weights(self, names: list[str]) -> None:
        self.publisher.push_object_store({n: self.rollouts.actors[n] for n in names}, self.version)

    def replace_rollout(self, name: str) -> str | None:
        if name not in self.rollouts.actors:
            return None  # removed on purpose (scaled down): its work is re-dispatched, not replaced
        self.rollouts.remove(name)
        new = self.rollouts.add()
        joined = self.rollouts.ready(timeout_s=self.config.trainer.rollout_timeout_s)
        if joined:
            self._load_current_weights(joined)
        self.publisher.invalidate()
        self.log(f"[recover] {name} replaced by {new} (weights v{self.version} via the object store)"
                 if joined else f"[recover] {name} died; its replacement {new} is still pending")
        return new

    def admit_joining(self) -> list[str]:
        """Joining actors that are up now get the current weights and start taking work."""
        joined = self.rollouts.ready(timeout_s=0.0)
        if joined:
            self._load_current_weights(joined)
            self.publisher.invalidate()
            self.log(f"[scale] {', '.join(joined)} joined with weights v{self.version}")
        return joined

    def _replace_dead_rollouts(self) -> None:
        _, dead = self.rollouts.alive()
        for name in dead:
            self.replace_rollout(name)
        self.publisher.invalidate()

    def resize_rollouts(self, target: int) -> None:
        """Grow or shrink towards `target`; removals happen between steps, when nothing is in
        flight on them in synchronous mode (asynchronous mode re-dispatches their requests)."""
        pool = self.rollouts
        while len(pool.actors) + len(pool.joining) > target and pool.joining:
            pool.remove(sorted(pool.joining)[-1])  # cancel pending joins first
        names = pool.names()
        while len(names) > target:
            self.rollouts.remove(names.pop())
        for _ in range(target - len(pool.actors) - len(pool.joining)):
            pool.add()
        self.publisher.invalidate()
        self.admit_joining()

    def split_prompts(self, indices: list[int], parts: int) -> list[list[int]]:
        parts = max(1, min(parts, len(indices)))
        return [indices[i::parts] for i in range(parts)]

    # ---- evaluation, checkpoints ---------------------------------------------------------------

    def evaluate(self, version: int) -> dict:
        """Greedy held-out accuracy (status ok) and mean reward on each evaluation set (the
        generation and scoring are `cluster.evaluate.generate_and_score`, shared with `bgpo eval`)."""
        out = {}
        limit = self.config.trainer.eval_limit
        for name, rows in self.eval_sets.items():
            rows = rows[:limit]
            stream = RolloutStream(self.rollouts, self.verifiers, task=self.config.task.name, rows=rows,
                                   timeout_s=self.config.trainer.rollout_timeout_s, on_dead_worker=self.replace_rollout)
            outcome = generate_and_score(stream, self.eval_prompt_ids[name][: len(rows)], seed=self.config.seed)
            results = outcome.results
            out[f"{name}_accuracy"] = sum(r["status"] == "ok" for r in results) / max(len(results), 1)
            out[f"{name}_reward"] = sum(r["score"] for r in results) / max(len(results), 1)
            out[f"{name}_n"] = len(results)
            out[f"{name}_tokens_per_s"] = sum(len(r.response_ids) for r in outcome.rollouts) / max(outcome.seconds, 1e-9)
        return out

    def checkpoint(self, step: int, cursor: dict, accounting) -> str:
        state = {"step": step, "version": self.version, "cursor": cursor, "accounting": dict(accounting),
                 "run_name": self.config.run_name, "saved_at": time.time()}
        # Sharded learners gather the optimizer state together; rank 0 writes.
        writers = self.learners if self.config.learner.sharding == "fsdp" else self.learners[:1]
        path = ray.get([a.save_checkpoint.remote(str(self.run_dir), step, state, self.config.checkpoint.keep_last)
                        for a in writers])[0]
        self.log(f"[checkpoint] {path}")
        return path

    def write_summary(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
