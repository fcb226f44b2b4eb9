"""Run metrics: metrics.jsonl, one console line per step, Ray dashboard series, optional trackers.

Keys in metrics.jsonl are namespaced (`rollout/`, `train/`, `perf/`, `time/`, `reward/`). The Ray
series (`ray.util.metrics`, exported with a `ray_` prefix on the node's Prometheus endpoint) use
Prometheus-safe names: a name with "/" would be dropped. TensorBoard and wandb are imported only
when asked for, and nothing here needs the network.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ray.util import metrics as ray_metrics


class DashboardSeries:
    """The handful of Prometheus series the controller and actors update."""

    def __init__(self) -> None:
        self.policy_version = ray_metrics.Gauge(
            "bgpo_policy_version", "Policy version held by a role", tag_keys=("role",)
        )
        self.buffer_depth = ray_metrics.Gauge("bgpo_buffer_depth", "Scored samples waiting for the learner")
        self.rollout_tokens = ray_metrics.Counter("bgpo_rollout_tokens_total", "Response tokens generated")
        self.verifier_outcomes = ray_metrics.Counter(
            "bgpo_verifier_outcomes_total", "Scored completions by task and status", tag_keys=("task", "status")
        )
        self.verifier_latency = ray_metrics.Histogram(
            "bgpo_verifier_latency_seconds",
            "Seconds to score one completion",
            boundaries=[0.001, 0.01, 0.1, 1.0, 10.0],
        )
        self.train_phase = ray_metrics.Gauge(
            "bgpo_train_phase", "1 while the run is in this phase", tag_keys=("phase",)
        )
        self.weight_sync_seconds = ray_metrics.Gauge("bgpo_weight_sync_seconds", "Last weight sync duration")
        self.step = ray_metrics.Gauge("bgpo_step", "Completed RL steps")
        self.reward_mean = ray_metrics.Gauge("bgpo_reward_mean", "Mean reward of the last step")
        self._phase: str | None = None

    def phase(self, name: str) -> None:
        if self._phase is not None:
            self.train_phase.set(0, tags={"phase": self._phase})
        self.train_phase.set(1, tags={"phase": name})
        self._phase = name


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends one JSON object per step to metrics.jsonl and forwards to optional trackers."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, wandb: bool = False,
                 config: dict | None = None, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # extra 'tracking'

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            import wandb as wandb_module  # extra 'tracking'

            self._wandb = wandb_module.init(project="bgpo", name=Path(run_dir).name, config=config or {})

    def _truncate_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: drop their old records."""
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, values: dict) -> None:
        record = {"step": step, "time/unix": time.time(), **{k: _finite(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def console_line(step: int, total: int, values: dict, started: float, start_step: int = 0) -> str:
    """`step 12/40 | reward 0.61 acc 0.38 | loss -0.012 gnorm 0.41 | 850 tok/s | 4.1s/step | ETA 1m55s`."""
    elapsed = time.time() - started
    per_step = elapsed / max(step - start_step, 1)
    eta = per_step * max(total - step, 0)

    def fmt(key: str, spec: str) -> str:
        value = values.get(key)
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    return (
        f"step {step}/{total} | reward {fmt('reward/mean', '.3f')} acc {fmt('reward/accuracy', '.3f')}"
        f" | loss {fmt('train/loss', '+.2e')} gnorm {fmt('train/grad_norm', '.3f')}"
        f" | {fmt('perf/rollout_tokens_per_s', '.0f')} tok/s | {fmt('time/step', '.1f')}s/step"
        f" | stale {fmt('rollout/staleness_mean', '.2f')} | ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    )
