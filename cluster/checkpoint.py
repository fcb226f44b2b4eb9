"""Checkpoints: `checkpoints/global_step_N/{policy/, optimizer/, trainer_state.json}` + `latest`.

A checkpoint is written into a temporary folder and renamed into place, and the `latest` file is
written last (atomically), so a run killed mid-save never leaves a half-written checkpoint that a
resume would pick up. Only the newest `keep_last` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

LATEST = "latest"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"global_step_{step}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    policy,
    learner_state: dict,
    trainer_state: dict,
    keep_last: int,
    weights: dict | None = None,
) -> Path:
    """Write atomically, point `latest` at it, prune old ones. Returns the checkpoint folder.
    `weights`: the full state of policy.model when the policy itself holds only a shard."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "optimizer").mkdir(parents=True)
    policy.save_pretrained(tmp / "policy", state_dict=weights)
    torch.save(learner_state, tmp / "optimizer" / "learner_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest = final.parent / LATEST
    latest_tmp = final.parent / (LATEST + ".tmp")
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, latest)
    _prune(final.parent, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    found = sorted(
        (p for p in root.glob("global_step_*") if p.is_dir() and not p.name.endswith(".tmp")),
        key=lambda p: int(p.name.rsplit("_", 1)[1]),
    )
    for old in found[: max(len(found) - keep_last, 0)]:
        shutil.rmtree(old)


def find_checkpoint(run_dir: Path, resume: str) -> Path | None:
    """`auto`: the one `latest` names (None if there is none); otherwise `resume` is a folder."""
    if resume == "auto":
        latest = Path(run_dir) / "checkpoints" / LATEST
        if not latest.exists():
            return None
        path = latest.parent / latest.read_text().strip()
    else:
        path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer_state.json)")
    return path


def load_trainer_state(path: Path) -> dict:
    return json.loads((Path(path) / "trainer_state.json").read_text())


def load_learner_state(path: Path) -> dict:
    # Memory-mapped: sharded learners each read only the slices of the optimizer state they keep,
    # and ranks on one node share the file's pages instead of holding a full copy each.
    return torch.load(Path(path) / "optimizer" / "learner_state.pt", weights_only=False, mmap=True)
