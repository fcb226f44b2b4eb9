"""A real `ray start --head` cluster on loopback, a job submitted with `ray job submit`, and the
dashboard's REST API and Prometheus endpoint checked while it runs (platform.md for loopback and
token auth)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from ray_helpers import kill_processes_mentioning

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as err:  # endpoint not up yet
            last = err
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    ports = {name: _free_port() for name in ("gcs", "dashboard", "metrics", "agent", "agent_grpc", "runtime_env")}
    temp = tmp_path_factory.mktemp("ray")
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--port={ports['gcs']}", f"--dashboard-port={ports['dashboard']}",
           f"--metrics-export-port={ports['metrics']}", f"--dashboard-agent-listen-port={ports['agent']}",
           f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['runtime_env']}",
           "--num-cpus=4", "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield {"env": env, **ports}
    finally:
        # `ray stop` would kill every Ray instance on the machine: stop only this one.
        kill_processes_mentioning(str(temp))


@pytest.mark.extended  # the default run submits a job to a 3-host cluster and reads its actors
# from the dashboard's state API: tests/multinode/test_runs_across_hosts.py::test_a
def test_job_submit_runs_to_success_and_the_dashboard_shows_it(head, tmp_path):
    env = head["env"]
    dashboard = f"http://127.0.0.1:{head['dashboard']}"
    overrides = [
        "run_name=submitted", f"output_dir={tmp_path}", "model.tiny.hidden_size=32", "model.tiny.num_layers=2",
        "model.tiny.num_heads=2", "task.num_train=64", "task.num_test=8", "warmup.steps=2",
        "rollout.group_size=4", "trainer.prompts_per_step=4", "trainer.total_steps=6", "trainer.eval_limit=8",
        "learner.n_t=2", "learner.num_cpus=0.5", "learner.num_threads=1", "rollout.num_cpus=0.5",
    ]
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", dashboard, "--runtime-env", str(REPO / "runtime_env.yaml"),
         "--working-dir", str(REPO), "--no-wait", "--", sys.executable, "-m", "cluster.launch", *overrides],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert submit.returncode == 0, submit.stderr + submit.stdout

    def job():
        jobs = json.loads(_get(f"{dashboard}/api/jobs/"))
        return jobs[0] if jobs else None

    _wait(job, 60, "the job to appear in /api/jobs/")

    def named_actors():
        data = json.loads(_get(f"{dashboard}/api/v0/actors?limit=200"))
        actors = data["data"]["result"]["result"]
        alive = {a.get("name") for a in actors if a.get("state") == "ALIVE"}
        return alive if {"controller", "rollout-0", "rollout-1", "verifier-0", "learner-0"} <= alive else None

    alive = _wait(named_actors, 120, "the run's named actors to be ALIVE")
    assert "controller" in alive

    def live_series():
        text = _get(f"http://127.0.0.1:{head['metrics']}/metrics")
        wanted = ("ray_bgpo_step", "ray_bgpo_policy_version", "ray_bgpo_train_phase", "ray_bgpo_buffer_depth")
        lines = [line for line in text.splitlines() if line.startswith(wanted)]
        steps = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("ray_bgpo_step")]
        return lines if steps and max(steps) >= 1 else None

    series = _wait(live_series, 180, "the project's metric series with a live step value")
    assert any(line.startswith("ray_bgpo_policy_version") for line in series)

    final = _wait(lambda: job() if job()["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None, 300, "the job to finish")
    assert final["status"] == "SUCCEEDED", final
    summary = json.loads((tmp_path / "submitted" / "summary.json").read_text())
    assert summary["steps"] == 6
