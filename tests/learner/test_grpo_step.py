"""The learner's GRPO step for causal policies (learner/grpo_step.py through LearnerWorker).

The loss and gradient equal a by-hand computation written from the GRPO formula (one unpadded
forward per row, explicit loops for the completion and the clip), whatever the micro-batch size;
rollout log-probs are used when the batch carries them; the causal warm start is next-token CE.
"""

import math
from dataclasses import replace

import pytest
import torch

from dllm.causal import build_tiny_causal_policy
from learner.batch import build_train_batch
from learner.config import LearnerConfig
from learner.sft import masked_diffusion_loss, next_token_loss, supervised_loss, warm_start
from learner.worker import LearnerWorker

L = 5


def tiny(seed: int = 0):
    return build_tiny_causal_policy(hidden_size=32, num_layers=1, num_heads=2, initializer_range=0.15, seed=seed)


def make_batch(policy, *, with_old: bool):
    eos = policy.eos_id
    prompts = [[5, 6, 7], [8, 9], [5, 6, 7], [8, 9]]
    # Row 1 stops at its first EOS (the tail is padding); row 3 repeats EOS inside its padding.
    responses = [[10, 11, 12, 13, 14], [15, eos, eos, eos, eos], [16, 17, eos, eos, eos], [eos, eos, eos, eos, eos]]
    gen = torch.Generator().manual_seed(3)
    old = (-torch.rand(4, L, generator=gen) * 3).tolist() if with_old else None
    return build_train_batch(prompts, responses, [1.0, 0.0, 0.0, 1.0], [0, 1, 0, 1], pad_id=policy.pad_id,
                             old_logprobs=old)


def config(micro_batch_size: int, beta: float = 0.0, temperature: float = 0.7) -> LearnerConfig:
    return LearnerConfig(objective="grpo", micro_batch_size=micro_batch_size, lr=1e-3, grad_clip=None,
                         grpo={"clip_eps": 0.2, "beta": beta, "temperature": temperature})


def by_hand_loss(policy, reference, batch, *, clip_eps: float, beta: float, temperature: float):
    """-(1/N) sum_i (1/|o_i|) sum_{t <= first EOS} [min(r A, clip(r) A) - beta * k3], one row at a time."""
    total = 0.0
    n = len(batch)
    for i in range(n):
        real = batch.attention_mask[i].bool()
        seq = batch.input_ids[i][real].unsqueeze(0)  # unpadded: no attention mask involved
        response = seq[0, -L:].tolist()
        count = response.index(policy.eos_id) + 1 if policy.eos_id in response else L

        def logps(model, seq=seq):
            logits = model.model(input_ids=seq).logits[0, -L - 1 : -1].float() / temperature
            return torch.log_softmax(logits, -1).gather(-1, seq[0, -L:].unsqueeze(-1)).squeeze(-1)

        logp = logps(policy)
        with torch.no_grad():
            ref = logps(reference)
        old = batch.old_logprobs[i] if batch.old_logprobs is not None else logp.detach()
        adv = float(batch.advantages[i])
        row = 0.0
        for t in range(count):
            ratio = torch.exp(logp[t] - old[t])
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
            delta = ref[t] - logp[t]
            row = row + surrogate - beta * (torch.exp(delta) - delta - 1)
        total = total + row / count
    return -total / n


@pytest.mark.parametrize("with_old", [True, False], ids=["stale", "on-policy"])
def test_loss_and_gradient_match_the_by_hand_computation(with_old):
    beta, temperature = 0.1, 0.7
    policy, reference = tiny(0), tiny(1)
    batch = make_batch(policy, with_old=with_old)
    worker = LearnerWorker(policy, config(4, beta, temperature), reference_policy=reference)
    metrics = worker.accumulate_gradients(batch)
    got = [p.grad.clone() for p in worker.params]

    check = tiny(0)
    loss = by_hand_loss(check, reference, batch, clip_eps=0.2, beta=beta, temperature=temperature)
    loss.backward()
    want = [p.grad for p in check.parameters() if p.requires_grad]
    assert metrics["train/loss"] == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-7)
    assert all(torch.allclose(g, w, rtol=1e-4, atol=1e-6) for g, w in zip(got, want, strict=True))
    assert metrics["train/completion_tokens"] == 5 + 2 + 3 + 1
    assert metrics["train/old_logprobs_from_rollout"] == float(with_old)
    assert metrics["train/kl"] > 0  # the reference is another network
    if with_old:
        assert metrics["train/clip_fraction"] > 0 and metrics["train/mean_abs_log_ratio"] > 0
    else:  # on-policy: every ratio is exactly 1, nothing clips
        assert metrics["train/clip_fraction"] == 0 and metrics["train/mean_abs_log_ratio"] == 0
        assert metrics["train/ratio_max"] == 1.0


def test_one_or_two_micro_batches_give_the_same_gradient():
    grads, losses = [], []
    for micro in (4, 2):
        policy = tiny(0)
        worker = LearnerWorker(policy, config(micro, beta=0.05), reference_policy=tiny(1))
        losses.append(worker.accumulate_gradients(make_batch(policy, with_old=True))["train/loss"])
        grads.append([p.grad.clone() for p in worker.params])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*grads, strict=True))


def test_step_updates_the_weights_and_reports_the_usual_metrics():
    policy = tiny(0)
    worker = LearnerWorker(policy, config(2))
    assert worker.reference_policy is None  # beta 0 keeps no reference copy
    before = [p.detach().clone() for p in worker.params]
    metrics = worker.step(make_batch(policy, with_old=False))
    for key in ("train/loss", "train/clip_fraction", "train/grad_norm", "train/reward_mean",
                "train/responses", "train/optimizer_steps", "perf/step_seconds"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["train/responses"] == 4 and metrics["train/inner_steps"] == 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, worker.params, strict=True))


def test_old_logprobs_must_have_one_value_per_response_token():
    policy = tiny(0)
    batch = make_batch(policy, with_old=True)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        replace(batch, old_logprobs=torch.zeros(4, L + 1))
    with pytest.raises(ValueError, match="old_logprobs row 1 has 4 values"):
        build_train_batch([[5], [6]], [[7] * L, [8] * L], [1.0, 0.0], [0, 0], pad_id=policy.pad_id,
                          old_logprobs=[[0.0] * L, [0.0] * 4])


def test_causal_warm_start_is_next_token_cross_entropy_and_learns():
    policy = tiny(0)
    assert supervised_loss(policy) is next_token_loss
    from dllm import build_tiny_policy

    assert supervised_loss(build_tiny_policy(hidden_size=32, num_layers=1, num_heads=2)) is masked_diffusion_loss
    batch = make_batch(policy, with_old=False)
    examples = (batch.input_ids, batch.attention_mask)
    with torch.no_grad():
        start = float(next_token_loss(policy, *examples, L))
    stats = warm_start(policy, examples, L, max_steps=60, lr=3e-3, batch_size=4, log_every=0)
    assert stats["warmup/steps"] == 60
    with torch.no_grad():
        assert float(next_token_loss(policy, *examples, L)) < 0.3 * start
