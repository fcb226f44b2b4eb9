"""Run metrics: metrics.jsonl, Ray dashboard series, optional trackers (the console line is the loop's).

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
        self.queue_depth = ray_metrics.Gauge("bgpo_queue_depth", "Rollout requests in flight")
        self.rollout_tokens = ray_metrics.Counter("bgpo_rollout_tokens_total", "Response tokens generated")
        self.verifier_outcomes = ray_metrics.Counter(
            "bgpo_verifier_outcomes_total", "Scored completions by task and status", tag_keys=("task", "status")
        )
        self.verifier_latency = ray_metrics.Histogram(
            "bgpo_verifier_latency_seconds",
            "Seconds to score one completion",
            boundaries=[0.001, 0.01, 0.1, 1.0, 10.0],
        )
        self.verifier_queue = ray_metrics.Histogram(
            "bgpo_verifier_queue_seconds",
            "Seconds a completion waited for a verifier slot before it started",
            boundaries=[0.001, 0.01, 0.1, 1.0, 10.0, 60.0],
        )
        self.train_phase = ray_metrics.Gauge(
            "bgpo_train_phase", "1 while the run is in this phase", tag_keys=("phase",)
        )
        self.weight_sync_seconds = ray_metrics.Gauge("bgpo_weight_sync_seconds", "Last weight sync duration")
        self.step = ray_metrics.Gauge("bgpo_step", "Completed RL steps")
        self.reward_mean = ray_metrics.Gauge("bgpo_reward_mean", "Mean reward of the last step")
        self.idle = ray_metrics.Gauge("bgpo_idle_fraction", "Idle share of the last step", tag_keys=("role",))
        self._phase: str | None = None

    def update(self, state, values: dict, extras: dict, rollout_versions: dict[str, int], *, task: str) -> None:
        """After a step: the loop's state and metrics, and the versions rollout workers hold."""
        self.step.set(state.step)
        self.policy_version.set(state.version, tags={"role": "learner"})
        if rollout_versions:  # the oldest weights any rollout worker holds
            self.policy_version.set(min(rollout_versions.values()), tags={"role": "rollout"})
        if isinstance(values.get("reward/mean"), float) and math.isfinite(values["reward/mean"]):
            self.reward_mean.set(values["reward/mean"])
        self.rollout_tokens.inc(values.get("rollout/tokens", 0))
        if "perf/weight_sync_seconds" in values:
            self.weight_sync_seconds.set(values["perf/weight_sync_seconds"])
        for status, count in extras["statuses"].items():
            self.verifier_outcomes.inc(count, tags={"task": task, "status": status})
        for latency in extras["latencies"]:
            self.verifier_latency.observe(latency)
        for seconds in extras.get("queue_seconds", ()):
            self.verifier_queue.observe(seconds)
        self.queue_depth.set(values.get("perf/queue_depth", 0))
        for role in ("learner", "rollout"):
            if f"perf/{role}_idle" in values:
                self.idle.set(values[f"perf/{role}_idle"], tags={"role": role})

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
