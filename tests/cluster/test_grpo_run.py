"""The autoregressive baseline on the cluster: tiny-causal + GRPO + rollout.engine hf.

Config validation (engine, model kind and objective must fit), the policy factory's causal kind,
short GRPO runs through TrainingLoop on in-process pools (synchronous: old log-probs recomputed by
the learner; asynchronous: the sampler's own, attached by assemble_batch), and one Ray end-to-end
run of `bgpo train` (marker ray).
"""

from __future__ import annotations

import json

import pytest
import torch
from ray_helpers import TINY_RUN
from test_loop import FakePools

from cluster.config import load_config, model_kind
from cluster.loop import LoopState, TrainingLoop
from cluster.metrics import MetricsLog
from cluster.policy_factory import build_policy, load_tokenizer
from cluster.run_data import RunData
from dllm.causal import CausalPolicy
from rollout.causal_sampler import CausalSampler, CausalSamplingConfig

CAUSAL = ["model.name_or_path=tiny-causal", "rollout.engine=hf", "learner.objective=grpo"]


def test_engine_model_and_objective_must_fit():
    with pytest.raises(ValueError, match="rollout.engine=vllm samples causal models, but model 'tiny'"):
        load_config(None, ["rollout.engine=vllm"])
    with pytest.raises(ValueError, match="rollout.engine=diffusion samples diffusion models.*tiny-causal"):
        load_config(None, ["model.name_or_path=tiny-causal", "learner.objective=grpo"])
    with pytest.raises(ValueError, match="learner.objective=grpo trains causal models"):
        load_config(None, ["learner.objective=grpo"])
    with pytest.raises(ValueError, match="learner.objective=bgpo trains diffusion models.*use learner.objective=grpo"):
        load_config(None, ["model.name_or_path=tiny-causal", "rollout.engine=hf"])
    config = load_config(None, [*CAUSAL, "rollout.sampling.temperature=0.8"])
    assert (config.model.kind, config.learner.grpo.temperature) == ("causal", 0.8)  # log-probs at T


def test_model_kind_of_names_and_folders(tmp_path):
    assert model_kind("tiny") == "diffusion" and model_kind("tiny-causal") == "causal"
    assert model_kind("GSAI-ML/LLaDA-8B-Instruct") == "diffusion"
    assert model_kind("Qwen/Qwen2.5-0.5B") == "causal"
    config = load_config(None, [*TINY_RUN, *CAUSAL])
    build_policy(config).save_pretrained(tmp_path / "ar")
    diffusion = load_config(None, TINY_RUN)
    build_policy(diffusion).save_pretrained(tmp_path / "dllm")
    assert model_kind(str(tmp_path / "ar")) == "causal"
    assert model_kind(str(tmp_path / "dllm")) == "diffusion"  # is_causal: false in its config.json


def test_tiny_causal_is_the_tiny_model_with_the_causal_mask():
    causal = build_policy(load_config(None, [*TINY_RUN, *CAUSAL]))
    diffusion = build_policy(load_config(None, TINY_RUN))
    assert isinstance(causal, CausalPolicy)
    a, b = causal.model.state_dict(), diffusion.model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # same shapes, same init
    config = load_config(None, [*TINY_RUN, *CAUSAL])
    assert load_tokenizer(config).get_vocab() == diffusion.tokenizer.get_vocab()


class CausalPools(FakePools):
    """test_loop's in-process pools with engine hf samplers in place of the diffusion workers."""

    def __init__(self, config, data, *, workers: int = 2) -> None:
        super().__init__(config, data, workers=workers)
        sampling = CausalSamplingConfig.from_sampling(config.rollout.sampling)
        self.workers = {name: CausalSampler(name, build_policy(config), sampling, seed=config.seed, micro_batch_size=8)
                        for name in self.workers}


def _run(tmp_path, *overrides):
    config = load_config(None, [*TINY_RUN, *CAUSAL, f"output_dir={tmp_path}", "warmup.steps=0",
                                "trainer.total_steps=3", "learner.lr=1e-3", *overrides])
    data = RunData(config, log=lambda _: None)
    pools = CausalPools(config, data)
    loop = TrainingLoop(config, pools, data.train_prompt_ids, pad_id=data.pad_id,
                        metrics=MetricsLog(tmp_path / "run"), log=lambda _: None)
    summary = loop.run(LoopState())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return summary, pools, [r for r in map(json.loads, lines) if "train/loss" in r]


def test_synchronous_grpo_run_recomputes_old_logprobs(tmp_path):
    summary, pools, steps = _run(tmp_path)
    assert (summary["steps"], summary["version"]) == (3, 3)
    assert pools.synced == [0, 1, 2, 3]
    assert {w.policy_version for w in pools.workers.values()} == {3}
    for record in steps:
        assert record["rollout/old_logprobs_from_rollout"] == 0 == record["train/old_logprobs_from_rollout"]
        assert record["train/mean_abs_log_ratio"] == 0.0 and record["train/clip_fraction"] == 0.0
        assert record["train/grad_norm"] > 0 and record["train/updated"] == 1.0
    assert summary["accounting"]["trained"] == summary["accounting"]["generated"] == 3 * 4 * 4


def test_asynchronous_grpo_run_uses_the_samplers_logprobs(tmp_path):
    summary, pools, steps = _run(tmp_path, "trainer.max_staleness=1")
    assert [r["rollout/staleness_max"] for r in steps] == [0, 1, 1]
    assert all(r["train/old_logprobs_from_rollout"] == 1 for r in steps)
    # Step 1 was sampled by the weights that train on it: the sampler's log-probs (KV-cached,
    # token by token) are the learner's, so the ratio is 1. Later batches are one update behind.
    assert steps[0]["train/mean_abs_log_ratio"] < 1e-4
    assert all(r["train/mean_abs_log_ratio"] > 1e-4 for r in steps[1:])


@pytest.mark.ray
@pytest.mark.slow
def test_bgpo_train_tiny_causal_grpo_end_to_end(ray_local, tiny_run):
    from cluster.launch import train

    config = tiny_run("grpo-hf", *CAUSAL, "trainer.total_steps=2")
    summary = train(config)
    assert summary["steps"] == 2 and summary["version"] == 2
    for when in ("before", "after"):
        assert summary[when]["test_n"] == 8 and 0.0 <= summary[when]["test_accuracy"] <= 1.0
    run_dir = config.run_dir
    resolved = (run_dir / "config.resolved.yaml").read_text()
    assert "engine: hf" in resolved and "kind: causal" in resolved
    ckpt = run_dir / "checkpoints" / "global_step_2" / "policy"
    assert model_kind(str(ckpt)) == "causal"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rollout/version_min"] == r["rollout/version_max"] == r["step"] - 1 for r in steps)
    assert all(r["rollout/workers"] == 2 and "train/grad_norm" in r for r in steps)
