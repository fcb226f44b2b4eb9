"""`RayPools`: the run's actors on a Ray cluster, behind the interface the loop needs (cluster/loop.py).

It owns the learner group, the rollout and verifier pools, the weight publisher, and the operations
on them: start (with a fit check first, and reports while actors are pending), warm start or
restore, dispatch and collection of rollouts, scoring, training, weight sync (bounded retries, the
failing receivers named), evaluation, checkpoints, and resizing between steps.

Weight versions: version 0 is the policy RL starts from (after the warm start); each learner
update makes version v+1, which `sync_weights` pushes to every rollout actor. A rollout actor that
joins mid-run (scaling or replacing a dead one) first gets the current version through the object
store, then the broadcast group is rebuilt with it at the next sync. The loop owns the version;
this class remembers which version each rollout worker acknowledged (the dashboard's gauge).
"""

from __future__ import annotations

import json
import queue
import time
from collections import Counter
from pathlib import Path

import ray

from cluster.checkpoint import find_checkpoint, load_trainer_state
from cluster.contracts import RolloutBatch, RolloutRequest
from cluster.dispatch import RolloutDispatcher
from cluster.evaluate import generate_and_score
from cluster.groups import LearnerGroup, RolloutPool, VerifierPool, actor_ask
from cluster.loop import LoopState
from cluster.run_data import RunData
from cluster.scoring import Scorer
from cluster.weight_sync import WeightPublisher


class LearnerLost(RuntimeError):
    """A learner rank died (its host, its process): the run cannot go on without its state."""


class PoolsDoNotFit(RuntimeError):
    """The run asks for more than the cluster has (checked before any actor is created)."""


def check_fits(config) -> None:
    """PoolsDoNotFit, naming the pool, unless each pool's actor fits some alive node and all the
    pools together fit the cluster's totals (custom resources and labels included)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    pools = {
        "learner": (config.learner.num_workers, actor_ask(config.learner.num_cpus, config.learner.num_gpus,
                                                          config.learner.placement), config.learner.placement),
        "rollout": (config.rollout.num_workers, actor_ask(config.rollout.num_cpus, config.rollout.num_gpus,
                                                          config.rollout.placement), config.rollout.placement),
        "verifier": (config.rewards.num_workers, actor_ask(config.rewards.num_cpus, 0.0, config.rewards.placement),
                     config.rewards.placement),
    }
    totals: Counter = Counter()
    for node in nodes:
        totals.update(node.get("Resources", {}))
    demand: Counter = Counter()
    for pool, (count, ask, placement) in pools.items():
        fitting = [n for n in nodes if _fits(n, ask, placement.label_selector)]
        if not fitting:
            raise PoolsDoNotFit(
                f"no node can host a {pool} actor: each asks {ask}"
                + (f" with labels {placement.label_selector}" if placement.label_selector else "")
                + f"; nodes have {[_summary(n) for n in nodes]}")
        for key, value in ask.items():
            demand[key] += count * value
    short = {k: (round(v, 2), round(totals.get(k, 0.0), 2)) for k, v in demand.items() if v > totals.get(k, 0.0) + 1e-9}
    if short:
        raise PoolsDoNotFit(
            "the run's pools ask more than the cluster has (asked, cluster total): "
            + ", ".join(f"{k} {a} > {t}" for k, (a, t) in short.items())
            + f"; per pool: {({p: (c, a) for p, (c, a, _) in pools.items()})}. Lower the pools' num_cpus/num_gpus "
            "or num_workers, or add nodes")


def _fits(node: dict, ask: dict, labels: dict) -> bool:
    have = node.get("Resources", {})
    node_labels = node.get("Labels", {}) or {}
    return (all(have.get(k, 0.0) + 1e-9 >= v for k, v in ask.items())
            and all(node_labels.get(k) == v for k, v in labels.items()))


def _summary(node: dict) -> dict:
    have = {k: v for k, v in node.get("Resources", {}).items() if "node:" not in k and "memory" not in k}
    return {"address": node.get("NodeManagerAddress"), **have}


class RayPools:
    def __init__(self, config, data: RunData, run_dir: Path, *, log=print) -> None:
        self.config, self.data, self.run_dir, self.log = config, data, run_dir, log
        timeout = config.trainer.start_timeout_s
        check_fits(config)
        self.rollouts, self.verifiers = RolloutPool(config), VerifierPool(config)
        self.learner_group = LearnerGroup(config, log_line=log)
        self.learners = self.learner_group.actors
        try:
            for _ in range(config.rollout.num_workers):
                self.rollouts.add()
            for _ in range(config.rewards.num_workers):
                self.verifiers.add()
            self.rollouts.start(timeout, log)
            self.verifiers.start(timeout, log)
            self.buckets = ray.get(self.learners[0].weight_plan.remote(), timeout=timeout)
        except BaseException:
            self.close()
            raise
        self.publisher = WeightPublisher(self.learners[0], self.buckets, config.weight_sync.backend)
        rt = config.trainer.rollout_timeout_s
        self.dispatcher = RolloutDispatcher(self.rollouts, timeout_s=rt, on_dead_worker=self.replace_rollout)
        self.scorer = Scorer(self.verifiers, task=config.task.name, rows=data.train_rows, timeout_s=rt)
        self.scale_requests: queue.Queue = queue.Queue()
        self.version = 0  # the version rollout workers are being kept at (the loop's, last pushed)
        self.held: dict[str, int] = {}  # worker -> version it acknowledged

    # ---- the loop's interface (cluster.loop.Pools) ---------------------------------------

    def rollout_workers(self) -> list[str]:
        return self.rollouts.names()

    def submit(self, request: RolloutRequest):
        return self.dispatcher.submit(request)

    def collect(self, tickets: list, accounting: Counter) -> list[RolloutBatch]:
        return self.dispatcher.collect(tickets, accounting)

    def in_flight(self, tickets: list) -> int:
        return self.dispatcher.in_flight(tickets)

    def score(self, rollouts: list) -> list:
        return self.scorer.score(rollouts)

    def learner_ranks(self) -> int:
        return len(self.learners)

    def train(self, shards: list) -> dict:
        try:
            return ray.get([a.train_step.remote(s) for a, s in zip(self.learners, shards, strict=True)],
                           timeout=self.config.trainer.progress_timeout_s)[0]
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
            raise self._learner_lost(err) from err

    def _learner_lost(self, err: Exception) -> LearnerLost:
        """The error that ends a run whose learner is gone, saying where and how to resume."""
        gone = []
        for rank, actor in enumerate(self.learners):
            try:
                ray.get(actor.endpoint.remote(), timeout=10)
            except ray.exceptions.RayError:
                gone.append(f"learner-{rank}")
        where = ", ".join(gone) or "a learner rank (not answering in time)"
        return LearnerLost(
            f"{where} failed ({type(err).__name__}: {str(err).splitlines()[0][:300]}); the run stops. "
            f"Resume from the last checkpoint with --resume auto (checkpoint.every={self.config.checkpoint.every})")

    def _learners_alive(self) -> bool:
        try:
            ray.get([a.endpoint.remote() for a in self.learners], timeout=30)
            return True
        except ray.exceptions.RayError:
            return False

    def sync_weights(self, version: int) -> dict:
        """Push the learner's weights as `version` to every rollout actor; dead receivers are
        replaced and the push retried (weight_sync.retries), then the run fails naming them."""
        start = time.perf_counter()
        retries = self.config.weight_sync.retries
        for attempt in range(retries + 1):
            try:
                sent = self.publisher.push(self.rollouts.actors, version)
                break
            except ray.exceptions.RayError as err:
                if not self._learners_alive():  # the sender is gone: no retry can help
                    raise self._learner_lost(err) from err
                _, dead = self.rollouts.alive()
                if attempt == retries:
                    raise RuntimeError(f"weight sync of v{version} failed {retries + 1} times "
                                       f"({type(err).__name__}: {err}); not answering: {dead or 'none'}") from err
                self.log(f"[sync] weight sync of v{version} failed ({type(err).__name__}); "
                         f"replacing {dead or 'no dead actor'} and retrying ({attempt + 1}/{retries})")
                for name in dead:
                    self.replace_rollout(name)
                self.publisher.invalidate()
        self.version = version
        self.held = dict.fromkeys(self.rollouts.names(), version)
        return {"perf/weight_sync_seconds": time.perf_counter() - start, "perf/weight_sync_bytes": sent,
                "perf/weight_sync_receivers": len(self.held)}

    def rollout_versions(self) -> dict[str, int]:
        return dict(self.held)

    def rescale(self) -> None:
        target = None
        while not self.scale_requests.empty():
            target = self.scale_requests.get_nowait()
        if target is not None:
            self.log(f"[scale] rollout workers {len(self.rollouts.names())} -> {target}")
            self.resize_rollouts(target)
        self.admit_joining()

    def evaluate(self, version: int) -> dict:
        """Greedy held-out accuracy (status ok) and mean reward on each evaluation set (the
        generation and scoring are `cluster.evaluate.generate_and_score`, shared with `bgpo eval`)."""
        out = {}
        limit = self.config.trainer.eval_limit
        rt = self.config.trainer.rollout_timeout_s
        for name, rows in self.data.eval_sets.items():
            rows = rows[:limit]
            dispatcher = RolloutDispatcher(self.rollouts, timeout_s=rt, on_dead_worker=self.replace_rollout)
            scorer = Scorer(self.verifiers, task=self.config.task.name, rows=rows, timeout_s=rt)
            outcome = generate_and_score(dispatcher, scorer, self.data.eval_prompt_ids[name][: len(rows)],
                                         seed=self.config.seed)
            results = outcome.results
            out[f"{name}_accuracy"] = sum(r.status == "ok" for r in results) / max(len(results), 1)
            out[f"{name}_reward"] = sum(r.score for r in results) / max(len(results), 1)
            out[f"{name}_n"] = len(results)
            out[f"{name}_tokens_per_s"] = sum(len(r.response_ids) for r in outcome.rollouts) / max(outcome.seconds, 1e-9)
        return out

    def checkpoint(self, step: int, state: dict) -> str:
        state = {**state, "run_name": self.config.run_name, "saved_at": time.time()}
        # Sharded learners gather the optimizer state together; rank 0 writes.
        writers = self.learners if self.config.learner.sharding == "fsdp" else self.learners[:1]
        try:
            path = ray.get([a.save_checkpoint.remote(str(self.run_dir), step, state, self.config.checkpoint.keep_last)
                            for a in writers])[0]
        except ray.exceptions.RayActorError as err:
            raise self._learner_lost(err) from err
        self.log(f"[checkpoint] {path}")
        return path

    # ---- start -------------------------------------------------------------------------------

    def restore_or_warm_start(self, resume: str | None) -> LoopState:
        """The loop's state: from a checkpoint (step, version, cursor, accounting), or fresh after
        the supervised warm start."""
        path = find_checkpoint(self.run_dir, resume) if resume else None
        if resume and resume != "auto" and path is None:
            raise FileNotFoundError(f"no checkpoint at {resume}")
        if path is not None:
            ray.get([a.load_checkpoint.remote(str(path)) for a in self.learners])
            saved = load_trainer_state(path)
            self.log(f"[resume] from {path} (step {saved['step']}, version {saved['version']})")
            return LoopState(step=saved["step"], version=saved["version"], cursor=saved["cursor"],
                             accounting=Counter(saved.get("accounting", {})))
        wc = self.config.warmup
        if wc.steps > 0:
            examples = self.data.warm_start_examples()
            loss = "next-token" if self.config.model.kind == "causal" else "masked-diffusion"
            self.log(f"[warmup] supervised {loss} warm start, {wc.steps} steps on learner-0")
            stats = ray.get(self.learners[0].warm_start.remote(examples, self.config.rollout.sampling.gen_length))
            self.log(f"[warmup] done: {stats}")
            if len(self.learners) > 1:
                payload = self.learners[0].numpy_weights.remote(exact=True)
                ray.get([a.load_numpy_weights.remote(payload) for a in self.learners[1:]])
        return LoopState()

    # ---- membership --------------------------------------------------------------------------

    def _load_current_weights(self, names: list[str]) -> None:
        self.publisher.push_object_store({n: self.rollouts.actors[n] for n in names}, self.version)
        self.held.update(dict.fromkeys(names, self.version))

    def replace_rollout(self, name: str) -> str | None:
        if name not in self.rollouts.actors:
            return None  # removed on purpose (scaled down): its work is re-dispatched, not replaced
        self.rollouts.remove(name)
        self.held.pop(name, None)
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

    def resize_rollouts(self, target: int) -> None:
        """Grow or shrink towards `target`; removals happen between steps, when nothing is in
        flight on them in synchronous mode (asynchronous mode re-dispatches their requests)."""
        pool = self.rollouts
        while len(pool.actors) + len(pool.joining) > target and pool.joining:
            pool.remove(sorted(pool.joining)[-1])  # cancel pending joins first
        names = pool.names()
        while len(names) > target:
            name = names.pop()
            pool.remove(name)
            self.held.pop(name, None)
        for _ in range(target - len(pool.actors) - len(pool.joining)):
            pool.add()
        self.publisher.invalidate()
        self.admit_joining()

    def close(self) -> None:
        """Kill every actor of the run and free the learners' placement group (a placement group
        outlives the actor that made it, holding its resources)."""
        for name in list(self.rollouts.actors) + list(self.rollouts.joining):
            self.rollouts.remove(name)
        for handle in self.verifiers.actors.values():
            ray.kill(handle, no_restart=True)
        self.learner_group.close()

    def write_summary(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
