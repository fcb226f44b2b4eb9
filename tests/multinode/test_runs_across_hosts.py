"""Training runs on a cluster of real hosts (network namespaces, tests/multinode/netcluster.py).

In order, on one cluster of this module (head on host 0; each host has 1 CPU and a custom resource
`host<i>`):
a. `ray job submit --runtime-env runtime_env.yaml` from host 0: learner on host 0, rollout workers
   on hosts 1 and 2, the verifier on host 2, the controller on host 0 (checked through the state
   API); weights reach every rollout worker across hosts, and the final weights equal the same
   config and seed on one node (a private local Ray in the root namespace) to 1e-6.
b. node join: host 3 joins mid-run, `bgpo scale` adds a rollout worker, which lands on host 3 (the
   only host with room) and trains with the current weights;
c. node loss: host 2's raylet is killed mid-run; its rollout worker is replaced on a live host, the
   run finishes with generated = trained + dropped, and the state API lists the node as DEAD;
d. learner host loss: the learner's host dies; the run stops saying to resume; `--resume auto`
   (learner now on host 0) ends on the weights of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fresh_cluster, require_namespaces
from safetensors.torch import load_file

pytestmark = pytest.mark.multinode

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BIN = Path(sys.executable).parent

# The tiny run of the single-node tests, with every thread count fixed (numerics must not depend
# on where an actor lands) and 3 steps.
BASE = [
    "model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.num_heads=2",
    "task.num_train=64", "task.num_test=8", "warmup.steps=3", "warmup.batch_size=16",
    "rollout.group_size=4", "rollout.num_threads=1", "learner.num_threads=1", "learner.n_t=2",
    "learner.micro_batch_size=8", "trainer.prompts_per_step=4", "trainer.total_steps=3",
    "trainer.eval_limit=4", "trainer.start_timeout_s=120", "trainer.rollout_timeout_s=120",
    "weight_sync.timeout_s=60",
]


def on(host: int) -> str:
    return f"{{host{host}: 0.01}}"


@pytest.fixture(scope="module")
def cluster():
    require_namespaces()
    net = fresh_cluster("bgporun", "10.211.9")
    net.up(3, ray=True)
    try:
        yield net
    finally:
        net.down()


REFERENCE_STEPS = 30


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The base run on one node (a private local Ray in the root namespace), 10 steps with a
    checkpoint after each: step s's weights are those of any run of the base config after s steps."""
    out = tmp_path_factory.mktemp("reference")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled")
    subprocess.run([PYTHON, "-m", "cluster.launch", *BASE, "run_name=reference", f"output_dir={out}",
                    f"trainer.total_steps={REFERENCE_STEPS}", "checkpoint.every=1",
                    f"checkpoint.keep_last={REFERENCE_STEPS}",
                    "rollout.num_workers=2", "rollout.num_cpus=0.5", "learner.num_cpus=0.5"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    return out / "reference"


def final_weights(run_dir: Path, step: int | None = None) -> dict:
    name = f"global_step_{step}" if step else (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / name / "policy" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert set(a) == set(b) and worst <= 1e-6, f"max |delta| {worst:.2e}"


def steps(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if "rollout/samples" in r]


def actor_hosts(net, run_name: str) -> dict[str, list[int]]:
    """Actor name -> the hosts it ran on (alive or dead), from the state API."""
    code = ("import json,urllib.request;"
            f"print(urllib.request.urlopen('{net.dashboard_url}/api/v0/actors?limit=1000&detail=1',"
            "timeout=10).read().decode())")
    actors = json.loads(net.exec(0, [PYTHON, "-c", code], timeout=30).stdout)["data"]["result"]["result"]
    ip_of = {n["node_id"]: n["node_ip"] for n in net.nodes()}
    out: dict[str, list[int]] = {}
    for actor in actors:
        if actor.get("ray_namespace") == f"bgpo.{run_name}" and actor.get("name"):
            host = net.addresses.index(ip_of[actor["node_id"]]) if actor.get("node_id") in ip_of else -1
            out.setdefault(actor["name"], []).append(host)
    return out


def driver(net, *overrides: str, resume: bool = False) -> subprocess.Popen:
    """`python -m cluster.launch` on host 0 against the cluster (RAY_ADDRESS = the head)."""
    args = [PYTHON, "-m", "cluster.launch", *BASE, *overrides] + (["--resume", "auto"] if resume else [])
    return net.popen(0, args, env={"RAY_ADDRESS": net.gcs_address}, cwd=REPO, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, timeout_s: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout_s)
    return out


def test_a_job_submitted_to_the_cluster_places_each_pool_and_matches_one_node(cluster, reference, tmp_path):
    overrides = [
        "run_name=across", f"output_dir={tmp_path}",
        "learner.num_cpus=1", f"learner.placement.resources={on(0)}",
        "rollout.num_workers=2", "rollout.num_cpus=0.75",  # host 0 is full: SPREAD over hosts 1, 2
        "rewards.num_cpus=0.25", f"rewards.placement.resources={on(2)}",
        f"cluster.controller.resources={on(0)}",
    ]
    submit = [str(BIN / "ray"), "job", "submit", f"--address={cluster.dashboard_url}",
              "--runtime-env", "runtime_env.yaml", "--", PYTHON, "-m", "cluster.launch", *BASE, *overrides]
    done = cluster.exec(0, submit, timeout=600, check=False, env={"RAY_ADDRESS": ""})
    assert done.returncode == 0 and "succeeded" in done.stdout.lower(), done.stdout[-3000:] + done.stderr[-2000:]
    hosts = actor_hosts(cluster, "across")
    assert hosts["controller"] == [0] and hosts["learner-0"] == [0] and hosts["verifier-0"] == [2]
    assert sorted(hosts["rollout-0"] + hosts["rollout-1"]) == [1, 2]
    records = steps(tmp_path / "across")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:  # every step's weights went to both rollout hosts, and their samples came back
        assert r["perf/weight_sync_receivers"] == 2 and r["perf/weight_sync_bytes"] > 0
        assert r["rollout/workers"] == 2 and r["rollout/version_min"] == r["rollout/version_max"] == r["step"] - 1
    assert_same_weights(final_weights(tmp_path / "across"), final_weights(reference, 3))


def test_b_a_host_that_joins_takes_new_rollout_workers(cluster, tmp_path):
    proc = driver(cluster, "run_name=join", f"output_dir={tmp_path}", "trainer.total_steps=400",
                  f"cluster.controller.resources={on(0)}",
                  "learner.num_cpus=1", f"learner.placement.resources={on(0)}",
                  "rollout.num_workers=2", "rollout.num_cpus=0.75",
                  "rewards.num_cpus=0.25", f"rewards.placement.resources={on(1)}")
    try:
        wait_for(lambda: steps(tmp_path / "join"), 300, "the first step", proc)
        new_host = cluster.add_host()  # node join: the only host with 0.75 CPU free
        scale = [str(BIN / "bgpo"), "scale", "--run", "join", "--rollout-workers", "3",
                 "--address", cluster.gcs_address]
        cluster.exec(0, scale, timeout=60)
        joined = wait_for(lambda: [r for r in steps(tmp_path / "join") if r["rollout/workers"] == 3],
                          300, "samples from 3 rollout workers", proc)
        assert joined[0]["rollout/staleness_max"] == 0  # the newcomer sampled with the current weights
        assert joined[0]["perf/weight_sync_receivers"] == 3
        cluster.exec(0, [str(BIN / "bgpo"), "stop", "--run", "join", "--address", cluster.gcs_address], timeout=60)
        out = finish(proc)
        assert proc.returncode == 0, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert actor_hosts(cluster, "join")["rollout-2"] == [new_host]
    last = steps(tmp_path / "join")[-1]
    assert last["accounting/generated"] == last["accounting/trained"]


def test_c_a_lost_host_is_replaced_and_the_run_finishes(cluster, tmp_path):
    proc = driver(cluster, "run_name=loss", f"output_dir={tmp_path}", "trainer.total_steps=400",
                  f"cluster.controller.resources={on(0)}",
                  "learner.num_cpus=1", f"learner.placement.resources={on(0)}",
                  "rollout.num_workers=3", "rollout.num_cpus=0.25",
                  "rewards.num_cpus=0.25", f"rewards.placement.resources={on(1)}",
                  # A sync caught mid-way by the loss can wait this long for the lost receiver
                  # (with the base's 60 s this run once stalled 64 s); tiny syncs take ms.
                  "weight_sync.timeout_s=15")
    try:
        wait_for(lambda: steps(tmp_path / "loss"), 300, "the first step", proc)
        before = actor_hosts(cluster, "loss")
        lost = [name for name, hosts in before.items() if name.startswith("rollout") and 2 in hosts]
        assert lost, before
        cluster.kill_raylet(2)
        wait_for(lambda: all(n["state"] == "DEAD" for n in cluster.nodes() if n["node_ip"] == cluster.address(2)),
                 60, "the head to declare host 2 dead", proc)
        replaced = wait_for(lambda: [n for n in actor_hosts(cluster, "loss") if n == "rollout-3"], 300,
                            "a replacement rollout worker", proc)
        done = len(steps(tmp_path / "loss"))
        wait_for(lambda: len(steps(tmp_path / "loss")) >= done + 3, 300, "three steps after the replacement", proc)
        cluster.exec(0, [str(BIN / "bgpo"), "stop", "--run", "loss", "--address", cluster.gcs_address], timeout=60)
        out = finish(proc)
        assert proc.returncode == 0, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    hosts = actor_hosts(cluster, "loss")
    assert replaced and 2 not in hosts["rollout-3"], hosts
    assert "[recover]" in out, out[-3000:]
    last = steps(tmp_path / "loss")[-1]
    assert last["rollout/workers"] == 3
    dropped = {k: v for k, v in last.items() if k.startswith("accounting/dropped/")}
    assert last["accounting/generated"] == last["accounting/trained"] + sum(dropped.values()), last


def test_d_learner_host_loss_stops_with_resume_advice_and_resume_matches(cluster, reference, tmp_path):
    # Evaluating every step changes no weights, and keeps the run going long enough to be hit.
    common = [f"output_dir={tmp_path}", "run_name=resume", "checkpoint.every=1", "checkpoint.keep_last=5",
              f"trainer.total_steps={REFERENCE_STEPS}", "trainer.eval_every=1",
              f"cluster.controller.resources={on(0)}",
              "rollout.num_workers=2", "rollout.num_cpus=0.25", "rewards.num_cpus=0.25",
              f"rewards.placement.resources={on(0)}", "learner.num_cpus=0.5"]
    proc = driver(cluster, *common, f"learner.placement.resources={on(1)}")
    latest = tmp_path / "resume" / "checkpoints" / "latest"
    try:
        wait_for(lambda: latest.exists(), 300, "the first checkpoint", proc)
        cluster.kill_host(1)
        out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:  # the run beat the kill: nothing to resume, and nothing was tested
        pytest.fail("the run finished before its learner's host was lost")
    assert "learner-0" in out and "--resume auto" in out, out[-3000:]
    resumed = driver(cluster, *common, f"learner.placement.resources={on(0)}", resume=True)
    out = finish(resumed)
    assert resumed.returncode == 0, out[-3000:]
    assert "[resume] from" in out
    assert_same_weights(final_weights(tmp_path / "resume"), final_weights(reference, REFERENCE_STEPS))
