"""The Controller actor: one run, from set-up to the last checkpoint, on the cluster.

It builds the run's data (cluster/run_data.py) and actor pools (cluster/pools.py), restores or
warm-starts the learner, then runs `cluster.loop.TrainingLoop`, which holds the loop itself.
`bgpo scale`, `bgpo stop` and `bgpo status` call into it while the run goes on (a threaded
actor); scale requests are applied by the loop between steps.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cluster.config import RunConfig, dump_config
from cluster.loop import TrainingLoop
from cluster.metrics import DashboardSeries, MetricsLog
from cluster.pools import RayPools
from cluster.run_data import RunData

log = logging.getLogger("bgpo.controller")


class Controller:
    def __init__(self, config: RunConfig, resume: str | None = None) -> None:
        self.config = config
        self.resume = resume
        self.run_dir = Path(config.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.resolved.yaml").write_text(dump_config(config))
        self.series = DashboardSeries()
        self.pools: RayPools | None = None
        self.loop: TrainingLoop | None = None
        self.status_line = "starting"

    def __repr__(self) -> str:
        # Ray prefixes every log line with this: no step here (it would be stale), the lines carry it.
        return f"Controller({self.config.run_name})"

    # ---- called by `bgpo scale`, `bgpo stop` and `bgpo status` while run() goes on ---------------

    def scale(self, rollout_workers: int) -> dict:
        if rollout_workers < 1:
            raise ValueError("rollout_workers must be >= 1")
        if self.pools is None:
            raise RuntimeError("the run is still starting: scale once its pools are up")
        self.pools.scale_requests.put(rollout_workers)
        return {"queued": rollout_workers, "step": self.loop.state.step if self.loop else 0}

    def stop(self) -> dict:
        """Finish the current step, then evaluate, checkpoint and end the run as if it were done."""
        if self.loop is not None:
            self.loop.stop_requested = True
        return {"stopping_after_step": (self.loop.state.step if self.loop else 0) + 1}

    def status(self) -> dict:
        pools, state = self.pools, self.loop.state if self.loop else None
        return {"step": state.step if state else 0, "version": state.version if state else 0,
                "rollout_workers": pools.rollouts.names() if pools else [],
                "rollout_joining": sorted(pools.rollouts.joining) if pools else [],
                "status": self.status_line}

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.config
        self.series.phase("setup")
        data = RunData(cfg, log=self._print)
        pools = self.pools = RayPools(cfg, data, self.run_dir, log=self._print)
        try:
            state = pools.restore_or_warm_start(self.resume)
            metrics = MetricsLog(self.run_dir, tensorboard=cfg.tracking.tensorboard, wandb=cfg.tracking.wandb,
                                 config=cfg.model_dump(mode="json"), resume_step=state.step or None)
            self.loop = TrainingLoop(cfg, pools, data.train_prompt_ids, pad_id=data.pad_id, metrics=metrics,
                                     log=self._print, series=self.series)
            try:
                summary = self.loop.run(state)
            finally:
                metrics.close()
        finally:
            pools.close()
        summary["run_dir"] = str(self.run_dir)
        pools.write_summary(summary)
        return summary

    def _print(self, line: str) -> None:
        self.status_line = line
        print(line, flush=True)
