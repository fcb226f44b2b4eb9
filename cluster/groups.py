"""Actor pools: creating, naming, replacing and resizing the rollout, verifier and learner actors.

Every actor lives in the run's namespace (`bgpo.<run_name>`) under a stable name (`rollout-3`),
with its pool's own CPU/GPU reservation, so rollout scales independently of the learner. Ray
cannot add bundles to a placement group, so each actor carries its own resource request; a
request that does not fit stays pending (the autoscaler's job), it is not an error.
"""

from __future__ import annotations

import logging

import ray

from cluster.actors import LearnerActor, RolloutActor, VerifierActor

log = logging.getLogger("bgpo.groups")


def namespace_of(run_name: str) -> str:
    return f"bgpo.{run_name}"


class RolloutPool:
    """Rollout actors by name; the index in a name is never reused within a run.

    A new actor first waits in `joining` until Ray has placed it and it answers a ping; only
    then does it get weights and work. With the autoscaler, a request that does not fit yet
    simply stays in `joining`.
    """

    def __init__(self, config, config_dict: dict) -> None:
        self.config, self.config_dict = config, config_dict
        self.actors: dict[str, ray.actor.ActorHandle] = {}
        self.joining: dict[str, tuple[ray.actor.ActorHandle, ray.ObjectRef]] = {}
        self._next_index = 0
        self.namespace = namespace_of(config.run_name)

    def add(self) -> str:
        """Request one more actor; it joins `actors` once `ready()` sees it answer."""
        name = f"rollout-{self._next_index}"
        self._next_index += 1
        rc = self.config.rollout
        handle = (
            ray.remote(RolloutActor)
            .options(name=name, namespace=self.namespace, num_cpus=rc.num_cpus, num_gpus=rc.num_gpus, max_restarts=0)
            .remote(name, self.config_dict)
        )
        self.joining[name] = (handle, handle.ping.remote())
        return name

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
    def __init__(self, config, config_dict: dict) -> None:
        self.config, self.config_dict = config, config_dict
        self.actors: dict[str, ray.actor.ActorHandle] = {}
        self._next_index = 0
        self.namespace = namespace_of(config.run_name)
        self._turn = 0

    def add(self) -> str:
        name = f"verifier-{self._next_index}"
        self._next_index += 1
        self.actors[name] = (
            ray.remote(VerifierActor)
            .options(name=name, namespace=self.namespace, num_cpus=self.config.rewards.num_cpus, max_restarts=0, max_concurrency=2)
            .remote(name, self.config_dict)
        )
        return name

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


def make_learners(config, config_dict: dict) -> list[ray.actor.ActorHandle]:
    lc = config.learner
    learners = [
        ray.remote(LearnerActor)
        .options(name=f"learner-{rank}", namespace=namespace_of(config.run_name), num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, max_restarts=0)
        .remote(rank, lc.num_workers, config_dict)
        for rank in range(lc.num_workers)
    ]
    host, port = ray.get(learners[0].endpoint.remote())
    ray.get([a.init_group.remote(host, port) for a in learners])
    return learners
