"""Actor pools: creating, naming, placing, replacing and resizing the run's actors.

Every actor lives in the run's namespace (`bgpo.<run_name>`) under a stable name (`rollout-3`),
with its pool's own CPU/GPU reservation and placement (custom resources, node labels, strategy;
cluster/config.py `Placement`), so rollout scales independently of the learner. The learner ranks
share one placement group (PACK by default, so NCCL ranks share a host when they fit). Nothing
waits silently: `wait_until_started` reports every 30 s what is still pending, what it asks for and
what the cluster has free, and fails past its deadline with that message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.actors import LearnerActor, RolloutActor, VerifierActor

log = logging.getLogger("bgpo.groups")
REPORT_EVERY_S = 30.0


def namespace_of(run_name: str) -> str:
    return f"bgpo.{run_name}"


def actor_ask(num_cpus: float, num_gpus: float, placement) -> dict[str, float]:
    """The resources one actor of a pool reserves (CPU, GPU and the placement's custom ones)."""
    ask = {"CPU": float(num_cpus), **{k: float(v) for k, v in placement.resources.items()}}
    if num_gpus:
        ask["GPU"] = float(num_gpus)
    return ask


def placement_options(placement) -> dict:
    """Ray actor options for a pool's placement (not the learner's: it has a placement group)."""
    options: dict = {}
    if placement.resources:
        options["resources"] = dict(placement.resources)
    if placement.label_selector:
        options["label_selector"] = dict(placement.label_selector)
    if placement.strategy == "SPREAD":
        options["scheduling_strategy"] = "SPREAD"
    return options


class StartTimeout(RuntimeError):
    """Actors of a pool were not placed and started within trainer.start_timeout_s."""


def pending_report(pool: str, names: list[str], ask: dict) -> str:
    free = {k: round(v, 2) for k, v in sorted(ray.available_resources().items()) if "node:" not in k}
    total = {k: round(v, 2) for k, v in sorted(ray.cluster_resources().items()) if "node:" not in k}
    return (f"{pool}: {', '.join(names)} not started yet; each asks {ask}; cluster free {free} "
            f"of {total}")


def wait_until_started(pool: str, pending: dict[str, ray.ObjectRef], ask: dict, *, timeout_s: float,
                       log_line: Callable[[str], None]) -> list[str]:
    """Wait for every pending actor's first answer; report while waiting; StartTimeout after
    `timeout_s`. An actor whose constructor failed raises its error (a config or code error)."""
    deadline, waiting = time.monotonic() + timeout_s, dict(pending)
    started: list[str] = []
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StartTimeout(f"gave up after {timeout_s:.0f} s (trainer.start_timeout_s): "
                               + pending_report(pool, sorted(waiting), ask))
        refs = {ref: name for name, ref in waiting.items()}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=min(REPORT_EVERY_S, left))
        for ref in done:
            ray.get(ref)
            waiting.pop(refs[ref])
            started.append(refs[ref])
        if waiting and not done:
            log_line("[waiting] " + pending_report(pool, sorted(waiting), ask))
    return started


class RolloutPool:
    """Rollout actors by name; the index in a name is never reused within a run.

    A new actor first waits in `joining` until Ray has placed it and it answers a ping; only
    then does it get weights and work (`ready`)."""

    def __init__(self, config, actor_class=RolloutActor) -> None:
        self.config, self.actor_class = config, actor_class  # benchmarks/fleet.py: a light class
        self.actors: dict[str, ray.actor.ActorHandle] = {}
        self.joining: dict[str, tuple[ray.actor.ActorHandle, ray.ObjectRef]] = {}
        self._next_index = 0
        self.namespace = namespace_of(config.run_name)
        rc = config.rollout
        self.ask = actor_ask(rc.num_cpus, rc.num_gpus, rc.placement)

    def add(self) -> str:
        """Request one more actor; it joins `actors` once `ready()` sees it answer."""
        name = f"rollout-{self._next_index}"
        self._next_index += 1
        rc = self.config.rollout
        handle = (
            ray.remote(self.actor_class)
            .options(name=name, namespace=self.namespace, num_cpus=rc.num_cpus, num_gpus=rc.num_gpus,
                     max_restarts=0, **placement_options(rc.placement))
            .remote(name, self.config)
        )
        self.joining[name] = (handle, handle.ping.remote())
        return name

    def start(self, timeout_s: float, log_line: Callable[[str], None]) -> list[str]:
        """Wait (reporting) until every joining actor answers; they join the pool."""
        names = wait_until_started("rollout", {n: ref for n, (_, ref) in self.joining.items()},
                                   self.ask, timeout_s=timeout_s, log_line=log_line)
        for name in names:
            self.actors[name] = self.joining.pop(name)[0]
        return names

    def ready(self, timeout_s: float = 0.0) -> list[str]:
        """Move the joining actors that answer within `timeout_s` into the pool; returns their names."""
        if not self.joining:
            return []
        refs = {ref: name for name, (_, ref) in self.joining.items()}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        joined = []
        for ref in done:
            name = refs[ref]
            handle, _ = self.joining.pop(name)
            ray.get(ref)  # raises if the actor failed to start: a config or code error, not transient
            self.actors[name] = handle
            joined.append(name)
        return joined

    def remove(self, name: str) -> None:
        handle = self.actors.pop(name, None) or self.joining.pop(name, (None,))[0]
        if handle is not None:
            ray.kill(handle, no_restart=True)

    def names(self) -> list[str]:
        return sorted(self.actors, key=lambda n: int(n.rsplit("-", 1)[1]))

    def alive(self, timeout_s: float = 30.0) -> tuple[list[str], list[str]]:
        """(alive, dead) by pinging every actor with a deadline."""
        refs = {name: h.ping.remote() for name, h in self.actors.items()}
        alive, dead = [], []
        for name, ref in refs.items():
            try:
                ray.get(ref, timeout=timeout_s)
                alive.append(name)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                log.warning("rollout actor %s is not answering (%s)", name, type(err).__name__)
                dead.append(name)
        return alive, dead


class VerifierPool:
    def __init__(self, config) -> None:
        self.config = config
        self.actors: dict[str, ray.actor.ActorHandle] = {}
        self._next_index = 0
        self.namespace = namespace_of(config.run_name)
        self._turn = 0
        rc = config.rewards
        self.ask = actor_ask(rc.num_cpus, 0.0, rc.placement)

    def add(self) -> str:
        name = f"verifier-{self._next_index}"
        self._next_index += 1
        rc = self.config.rewards
        self.actors[name] = (
            ray.remote(VerifierActor)
            .options(name=name, namespace=self.namespace, num_cpus=rc.num_cpus, max_restarts=0,
                     max_concurrency=2, **placement_options(rc.placement))
            .remote(name, self.config)
        )
        return name

    def start(self, timeout_s: float, log_line: Callable[[str], None]) -> None:
        wait_until_started("verifier", {n: a.health.remote() for n, a in self.actors.items()},
                           self.ask, timeout_s=timeout_s, log_line=log_line)

    def replace(self, name: str) -> str:
        handle = self.actors.pop(name, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)
        return self.add()

    def next(self) -> tuple[str, ray.actor.ActorHandle]:
        names = sorted(self.actors)
        name = names[self._turn % len(names)]
        self._turn += 1
        return name, self.actors[name]


class LearnerGroup:
    """The learner ranks in one placement group (one bundle per rank), joined in one
    torch.distributed group."""

    def __init__(self, config, *, log_line: Callable[[str], None]) -> None:
        lc = config.learner
        self.ask = actor_ask(lc.num_cpus, lc.num_gpus, lc.placement)
        strategy = lc.placement.strategy if lc.placement.strategy != "DEFAULT" else "PACK"
        labels = [dict(lc.placement.label_selector)] * lc.num_workers if lc.placement.label_selector else None
        self.group = placement_group([dict(self.ask)] * lc.num_workers, strategy=strategy,
                                     bundle_label_selector=labels)
        self.actors: list = []
        try:
            self._start(config, log_line)
        except BaseException:
            self.close()
            raise

    def _start(self, config, log_line: Callable[[str], None]) -> None:
        lc = config.learner
        wait_until_started("learner", {"learner placement group": self.group.ready()}, self.ask,
                           timeout_s=config.trainer.start_timeout_s, log_line=log_line)
        self.actors = [
            ray.remote(LearnerActor)
            .options(name=f"learner-{rank}", namespace=namespace_of(config.run_name), num_cpus=lc.num_cpus,
                     num_gpus=lc.num_gpus, max_restarts=0, resources=dict(lc.placement.resources) or None,
                     scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, rank))
            .remote(rank, lc.num_workers, config)
            for rank in range(lc.num_workers)
        ]
        init_method = ray.get(self.actors[0].endpoint.remote(), timeout=config.trainer.start_timeout_s)
        ray.get([a.init_group.remote(init_method) for a in self.actors], timeout=config.trainer.start_timeout_s)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)
