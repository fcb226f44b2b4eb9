"""LearnerWorker: BGPO == retained-graph ELBO ratio on-policy, invariances, skipping, state."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from learner import LearnerConfig, LearnerWorker, draw_masks

TOL = 1e-10


def with_masks(batch, n_t: int, seed: int = 0):
    masks = draw_masks(len(batch), n_t, batch.response_length, torch.Generator().manual_seed(seed))
    return replace(batch, masks=masks)


def grads_of(worker: LearnerWorker) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in worker.params]


def assert_grads_close(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = TOL) -> None:
    worst = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    assert worst <= tol, f"max gradient difference {worst:.3e}"


def worker(policy, **overrides) -> LearnerWorker:
    config = LearnerConfig(**{"n_t": 4, "micro_batch_size": 6, "lr": 1e-3, **overrides})
    return LearnerWorker(policy, config)


def test_bgpo_equals_elbo_ratio_on_policy(make_policy, make_batch):
    """Value and gradient of the BGPO step equal the retained-graph ELBO ratio's (section 4)."""
    batch = with_masks(make_batch(make_policy(), n_groups=3, group_size=3), n_t=6)
    bgpo = worker(make_policy(), objective="bgpo", n_t=6, micro_batch_size=4, mc_chunk=1)
    ratio = worker(make_policy(), objective="elbo_ratio", n_t=6, micro_batch_size=4, mc_chunk=2)
    m_b = bgpo.accumulate_gradients(batch)
    m_r = ratio.accumulate_gradients(batch)
    assert abs(m_b["train/loss"] - m_r["train/loss"]) <= TOL
    g_b, g_r = grads_of(bgpo), grads_of(ratio)
    assert max(float(g.abs().max()) for g in g_b) > 1e-3  # a real, non-trivial gradient
    assert_grads_close(g_b, g_r)
    # The whole step (clip + AdamW) then gives the same weights.
    bgpo.optimizer.zero_grad()
    ratio.optimizer.zero_grad()
    s_b, s_r = bgpo.step(batch), ratio.step(batch)
    assert abs(s_b["train/grad_norm"] - s_r["train/grad_norm"]) <= TOL
    for p, q in zip(bgpo.params, ratio.params, strict=True):
        assert torch.allclose(p, q, rtol=0, atol=TOL)


def test_z_is_exactly_zero_on_policy(policy, batch):
    """Masks drawn by the worker are reused for the old and new passes (common random numbers)."""
    metrics = worker(policy, n_t=5).accumulate_gradients(batch)
    assert metrics["train/mean_abs_z"] == 0.0
    assert metrics["train/n_t"] == 5.0


def test_micro_batch_invariance(make_policy, batch):
    batch = with_masks(batch, n_t=4)
    reference = worker(make_policy(), micro_batch_size=6)
    reference.accumulate_gradients(batch)
    for mbs in (4, 1):  # 4 gives unequal micro-batches (4 + 2)
        w = worker(make_policy(), micro_batch_size=mbs)
        w.accumulate_gradients(batch)
        assert_grads_close(grads_of(w), grads_of(reference))


def test_mc_chunk_invariance(make_policy, batch):
    batch = with_masks(batch, n_t=4)
    reference = worker(make_policy(), mc_chunk=1)
    reference.accumulate_gradients(batch)
    for chunk in (3, 4):  # 3 gives unequal chunks (3 + 1)
        w = worker(make_policy(), mc_chunk=chunk, micro_batch_size=4)
        w.accumulate_gradients(batch)
        assert_grads_close(grads_of(w), grads_of(reference))


def test_zero_advantage_gives_zero_gradient(policy, make_batch):
    batch = make_batch(policy, rewards=[1.0, 1.0, 0.0, 0.0, 0.3, 0.3])  # equal rewards per group
    w = worker(policy)
    metrics = w.accumulate_gradients(batch)
    assert all(float(g.abs().max()) == 0.0 for g in grads_of(w))
    assert metrics["train/advantage_abs_mean"] == 0.0


def test_nan_reward_skips_the_step(policy, make_batch):
    batch = make_batch(policy, rewards=[float("nan"), 1.0, 0.0, 1.0, 0.3, 0.2])
    w = worker(policy)
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = w.step(batch)
    assert metrics["train/skipped"] == 1.0 and w.skipped_steps == 1 and w.steps == 0
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), before, strict=True))
    assert all(p.grad is None for p in policy.parameters())
    good = make_batch(policy)
    assert w.step(good)["train/skipped"] == 0.0 and w.steps == 1  # and training goes on


def test_nan_ell_old_skips_the_step(policy, batch):
    w = worker(policy)
    prepared = w.prepare(batch)
    prepared.ell_old[0, 0] = float("nan")
    assert w.step(prepared)["train/skipped"] == 1.0


def test_supplied_ell_old_is_used(make_policy, batch):
    """Async mode: ell_old from the behaviour policy's copy makes z != 0; the step still runs."""
    behaviour = make_policy(seed=1)
    w = worker(make_policy(seed=0))
    batch = with_masks(batch, n_t=4)
    batch = replace(batch, ell_old=w.old_terms(batch, policy=behaviour))
    metrics = w.step(batch)
    assert metrics["train/mean_abs_z"] > 0 and metrics["train/skipped"] == 0.0


def test_clipping_is_inert_on_policy(make_policy, batch):
    """DARE's clip (0.2, dual 3.0), on by default for stale rollouts, leaves an on-policy update
    bit-identical: same gradients, same weights after the step."""
    batch = with_masks(batch, n_t=4)
    plain = worker(make_policy(), clip_eps=None)
    clipped = worker(make_policy(), clip_eps=0.2, dual_clip=3.0)
    plain.accumulate_gradients(batch)
    metrics = clipped.accumulate_gradients(batch)
    assert metrics["train/clip_fraction"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(grads_of(plain), grads_of(clipped), strict=True))
    plain.apply_update()
    clipped.apply_update()
    assert all(torch.equal(a, b) for a, b in
               zip(plain.policy.parameters(), clipped.policy.parameters(), strict=True))


def test_auto_clip_is_dares_for_stale_rollouts_only():
    auto = LearnerConfig()
    assert auto.clip_eps == "auto" and auto.ratio_clip(0) is None and auto.ratio_clip(1) == 0.2
    assert LearnerConfig(clip_eps=None).ratio_clip(2) is None
    assert LearnerConfig(clip_eps=0.1).ratio_clip(0) == 0.1


def test_state_dict_round_trip(make_policy, batch):
    w = worker(make_policy())
    w.step(batch)
    state = copy.deepcopy(w.state_dict())
    restored = worker(make_policy())
    restored.load_state_dict(state)
    assert restored.steps == 1
    assert torch.equal(restored.generator.get_state(), w.generator.get_state())
    opt_a, opt_b = w.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)
    # the next masks drawn are the same
    assert torch.equal(w.prepare(batch).masks, restored.prepare(batch).masks)


def test_metrics_are_namespaced(policy, batch):
    metrics = worker(policy).step(batch)
    for key in (
        "train/loss",
        "train/grad_norm",
        "train/mean_abs_z",
        "train/skipped",
        "train/tokens",
        "train/clip_fraction",
        "perf/step_seconds",
        "perf/peak_memory_bytes",
    ):
        assert key in metrics, key
    assert all(k.split("/")[0] in ("train", "perf") for k in metrics)
    assert metrics["train/tokens"] == len(batch) * batch.response_length


def test_diffu_grpo_runs_and_moves_the_loss(make_policy, batch):
    policy = make_policy()
    w = worker(policy, objective="diffu_grpo", lr=1e-2, diffu_grpo={"iterations": 3, "beta": 0.04})
    reference = [p.detach().clone() for p in w.reference_policy.parameters()]
    metrics = w.step(batch)
    assert w.steps == 3 and metrics["train/skipped"] == 0.0
    assert metrics["train/loss_last_iteration"] < metrics["train/loss_first_iteration"]
    assert metrics["train/mean_abs_log_ratio"] > 0
    assert all(
        torch.equal(p, q) for p, q in zip(w.reference_policy.parameters(), reference, strict=True)
    )
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), reference, strict=True))
