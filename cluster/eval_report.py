"""What `bgpo eval` writes: per-item records, the summary, and markdown tables of summaries.

Kept apart from the evaluation itself (`cluster.evaluate`) so reports can be read and tabulated
without Ray or a model.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.evaluate import EvalOutcome


def item_records(texts: list[str], outcome: EvalOutcome) -> list[dict]:
    """One results.jsonl record per row of `outcome` (generated or missing), in row order."""
    records = []
    for rollout, result in zip(outcome.rollouts, outcome.results, strict=True):
        score = result.score
        records.append({
            "index": rollout.item_index, "prompt": texts[rollout.item_index], "completion": rollout.text,
            "score": score if math.isfinite(score) else None, "status": result.status,
            "detail": result.detail, "nfe": rollout.nfe, "seconds": rollout.seconds,
            "score_seconds": result.seconds, "extra": result.extra,
        })
    for index, why in outcome.missing.items():
        records.append({"index": index, "prompt": texts[index], "completion": None, "score": None,
                        "status": "error", "detail": why, "nfe": None, "seconds": None,
                        "score_seconds": None, "extra": {}})
    return sorted(records, key=lambda r: r["index"])


def summarize(records: list[dict], outcome: EvalOutcome, config, kind: str, limit: int | None) -> dict:
    n = len(records)
    sampling = config.rollout.eval_sampling
    tokens = sum(len(r.response_ids) for r in outcome.rollouts)
    return {
        "task": config.task.name, "model": config.model.name_or_path, "kind": kind, "n": n,
        "accuracy": sum(r["status"] == "ok" for r in records) / n,
        "mean_reward": sum(r["score"] or 0.0 for r in records) / n,  # unscored rows count as 0
        "tokens_per_s": tokens / max(outcome.seconds, 1e-9),
        "generation_seconds": outcome.seconds,
        "statuses": dict(Counter(r["status"] for r in records)),
        "settings": {
            **sampling.model_dump(), "prompt_style": config.task.prompt_style,
            "preset": config.task.preset, "data": config.task.test_path or "generated",
            "limit": limit, "seed": config.seed, "device": config.device,
            "rollout_workers": config.rollout.num_workers, "verifier_workers": config.rewards.num_workers,
        },
    }


def markdown_table(summaries: list[dict], labels: list[str] | None = None) -> str:
    """One row per summary; `labels` (e.g. the folders they came from) add a first column."""
    cols = ["task", "model", "n", "accuracy", "mean reward", "tokens/s", "L", "steps", "block"]
    cols = (["run"] if labels else []) + cols
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, s in enumerate(summaries):
        cells = [s["task"], s["model"], s["n"], f"{100 * s['accuracy']:.1f}%", f"{s['mean_reward']:.3f}",
                 f"{s['tokens_per_s']:.1f}", s["settings"]["gen_length"], s["settings"]["steps"],
                 s["settings"]["block_length"]]
        cells = ([labels[i]] if labels else []) + cells
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def collect_table(root: str | Path) -> str:
    """A markdown table of every summary.json under `root`, labelled by its folder (for
    scripts/reproduce_paper.sh)."""
    root = Path(root)
    found = sorted(root.rglob("summary.json"))
    labels = [str(p.parent.relative_to(root)) for p in found]
    return markdown_table([json.loads(p.read_text()) for p in found], labels)
