"""Runs that survive: a killed rollout worker or verifier, a hung verifier, scaling mid-run, and a
driver killed mid-run then resumed. Each checks the run finishes and the sample accounting
balances (generated = trained + dropped, every drop with a reason)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import ray
from ray_helpers import kill_processes_mentioning
from safetensors.torch import load_file

from cluster.groups import namespace_of
from cluster.launch import train

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _steps(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if '"train/loss"' in line]


def _balanced(record):
    dropped = sum(v for k, v in record.items() if k.startswith("accounting/dropped/"))
    return record["accounting/generated"] == record["accounting/trained"] + dropped


class Background:
    """train() in a thread, so the test can act on the run while it goes on."""

    def __init__(self, config):
        self.config, self.summary, self.error = config, None, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.summary = train(self.config)
        except BaseException as err:  # surfaced by join()
            self.error = err

    def wait_for_step(self, step, timeout_s=180):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(_steps(self.config.run_dir)) >= step:
                return
            if not self.thread.is_alive():
                raise AssertionError(f"run ended early: {self.error!r}")
            time.sleep(0.2)
        raise AssertionError(f"step {step} not reached in {timeout_s}s")

    def join(self, timeout_s=300):
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "run did not finish"
        if self.error:
            raise self.error
        return self.summary


def _actor(config, name):
    return ray.get_actor(name, namespace=namespace_of(config.run_name))


@pytest.mark.extended  # the default run covers it across hosts: test_runs_across_hosts.py::test_c
def test_killed_rollout_worker_is_replaced(ray_local, tiny_run):
    config = tiny_run("kill-rollout", "trainer.total_steps=5")
    run = Background(config)
    run.wait_for_step(1)
    ray.kill(_actor(config, "rollout-1"), no_restart=True)
    summary = run.join()
    assert summary["steps"] == 5
    records = _steps(config.run_dir)
    assert _balanced(records[-1])
    assert records[-1]["rollout/workers"] == 2  # the replacement took the dead worker's place


def test_killed_verifier_is_replaced(ray_local, tiny_run):
    config = tiny_run("kill-verifier", "trainer.total_steps=5")
    run = Background(config)
    run.wait_for_step(1)
    ray.kill(_actor(config, "verifier-0"), no_restart=True)
    summary = run.join()
    assert summary["steps"] == 5
    assert _balanced(_steps(config.run_dir)[-1])


def test_hung_verifier_is_replaced_at_its_deadline(ray_local, tiny_run):
    config = tiny_run("hang-verifier", "trainer.total_steps=4", "trainer.rollout_timeout_s=8")
    run = Background(config)
    run.wait_for_step(1)
    verifier = _actor(config, "verifier-0")
    for _ in range(2):  # both of its threads wedged: every scoring call now waits
        verifier.stall.remote(3600)
    summary = run.join()
    assert summary["steps"] == 4
    assert _balanced(_steps(config.run_dir)[-1])


@pytest.mark.extended  # scaling up onto a joining host: test_runs_across_hosts.py::test_b
def test_scaling_mid_run(ray_local, tiny_run):
    config = tiny_run("scale", "trainer.total_steps=200", "rollout.num_cpus=0.25")
    run = Background(config)
    run.wait_for_step(1)
    controller = _actor(config, "controller")
    ray.get(controller.scale.remote(4))
    # New actors join between steps once Ray has started them (a few seconds each).
    deadline = time.monotonic() + 180
    while not any(r["rollout/workers"] == 4 for r in _steps(config.run_dir)):
        assert time.monotonic() < deadline, [r["rollout/workers"] for r in _steps(config.run_dir)]
        assert run.thread.is_alive(), f"run ended before scaling up: {run.error!r}"
        time.sleep(0.2)
    ray.get(controller.scale.remote(1))
    deadline = time.monotonic() + 180
    while _steps(config.run_dir)[-1]["rollout/workers"] != 1:
        assert time.monotonic() < deadline, [r["rollout/workers"] for r in _steps(config.run_dir)]
        time.sleep(0.2)
    ray.get(controller.stop.remote())
    run.join()
    workers = [r["rollout/workers"] for r in _steps(config.run_dir)]
    assert 4 in workers, workers
    assert workers[-1] == 1, workers
    assert _balanced(_steps(config.run_dir)[-1])


@pytest.mark.extended  # the default run covers it across hosts: test_runs_across_hosts.py::test_d
def test_driver_killed_mid_run_then_resumed_matches_an_uninterrupted_run(ray_local, tiny_run, tmp_path):
    # Evaluating every step changes no weights and keeps the run going long enough to be killed.
    common = ("trainer.total_steps=8", "checkpoint.every=1", "checkpoint.keep_last=10", "trainer.eval_every=1")
    reference = tiny_run("uninterrupted", *common)
    train(reference)

    killed = tiny_run("killed", *common)
    overrides = [f"{k}={v}" for k, v in _flatten(killed.model_dump(mode="json")).items()]
    # The killed run's local Ray keeps its files (and so every process's command line) under a
    # short temp dir of its own, so that the whole cluster can be killed with the driver.
    ray_tmp = tempfile.mkdtemp(prefix="bgpo-kill-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    env.pop("RAY_ADDRESS", None)  # set by this process's ray.init: the run must start its own Ray
    proc = subprocess.Popen([sys.executable, "-m", "cluster.launch", *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = killed.run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (latest.exists() and latest.read_text().strip() >= "global_step_2"):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver...
    proc.wait(30)
    kill_processes_mentioning(ray_tmp)  # ...and the cluster it started, controller included
    resumed_at = int(latest.read_text().strip().rsplit("_", 1)[1])
    assert 2 <= resumed_at < 8

    summary = train(killed, resume="auto")
    assert summary["start_step"] == resumed_at and summary["steps"] == 8
    a = load_file(str(reference.run_dir / "checkpoints" / "global_step_8" / "policy" / "model.safetensors"))
    b = load_file(str(killed.run_dir / "checkpoints" / "global_step_8" / "policy" / "model.safetensors"))
    for name, value in a.items():
        assert (value - b[name]).abs().max().item() < 1e-6, name
    state = json.loads((killed.run_dir / "checkpoints" / "global_step_8" / "trainer_state.json").read_text())
    ref_state = json.loads((reference.run_dir / "checkpoints" / "global_step_8" / "trainer_state.json").read_text())
    assert state["cursor"] == ref_state["cursor"]


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, type(None))) else value
    return out


def test_a_run_that_cannot_fit_fails_at_once_naming_the_pool(ray_local, tiny_run):
    """The one-node case of the multi-node issue: pools asking more than the cluster has used to
    leave an actor PENDING and the job RUNNING forever; now the run fails before starting any."""
    too_many = tiny_run("too-many", "rollout.num_workers=3", "rollout.num_cpus=1.5")
    with pytest.raises(ray.exceptions.RayTaskError, match=r"ask more than the cluster has.*CPU 5\.25 > 4\.0"):
        train(too_many)
    nowhere = tiny_run("nowhere", "rewards.placement.resources={gpu_host: 1}")
    with pytest.raises(ray.exceptions.RayTaskError, match="no node can host a verifier actor"):
        train(nowhere)


@ray.remote(num_cpus=3)
class _Hog:
    def ping(self):
        return True


def test_actors_that_stay_pending_are_reported_then_fail_with_the_reason(ray_local, tiny_run):
    hog = _Hog.remote()
    ray.get(hog.ping.remote())  # 3 of the 4 CPUs taken: the pools fit the cluster, not what is free
    try:
        config = tiny_run("pending", "rollout.num_cpus=1", "trainer.start_timeout_s=4")
        started = time.monotonic()
        with pytest.raises(ray.exceptions.RayTaskError, match=r"start_timeout_s.*rollout: rollout-0, rollout-1 "
                                                               r"not started yet; each asks \{'CPU': 1\.0\}; cluster free"):
            train(config)
        assert time.monotonic() - started < 120
    finally:
        ray.kill(hog)
