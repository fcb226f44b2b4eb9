"""The paper's claims at toy scale: does a larger n_t help BGPO, and what does the memory buy?

    python benchmarks/paper_small.py [--seeds 2] [--json benchmarks/results/paper_small.json]
    python benchmarks/paper_small.py --smoke            # 2 RL steps, small eval: checks the script

What is trained (the embedded tiny task of configs/tiny-sudoku.yaml: 4x4 Sudoku, compact prompts,
a 0.86 M-parameter bidirectional Llama, the full distributed loop of cluster.launch.train):
- per seed, ONE supervised warm start (`warmup.steps` as in the default config, `trainer.total_steps=0`);
  its checkpoint is reused when the folder already holds one made with the same settings;
- from that same checkpoint, with the same RL budget (`--steps` optimizer steps of `--prompts`
  prompts x 8 samples, the same prompt order, the same learning rate):
  BGPO at n_t = 1, 4, 16; `elbo_ratio` (the exact ELBO-ratio objective, all n_t graphs retained)
  at the largest n_t whose learner peak memory fits that of BGPO at n_t = 16; diffu-GRPO (d1's
  one-step estimator, its 12 inner iterations per batch).

What is reported, per configuration, over seeds (mean and sample standard deviation):
- held-out accuracy after RL (greedy decoding; fraction of puzzles fully solved) on both eval sets
  the run reports: `test` = puzzles of grids never seen in training, `heldout` = unseen puzzles of
  training grids; beside it the before-RL accuracy of the shared warm start;
- learner peak memory of one step, measured with the method of benchmarks/learner_memory.py
  (a TorchDispatchMode tracker of live tensor bytes over the pre-step baseline, one fresh
  subprocess per configuration, one warm-up step first) for THIS run's model and learner
  settings (its micro-batch size, prompt and response lengths; two micro-batches of the
  B x G batch are measured, see measure_one), unless
  `--memory-json` names a learner_memory.py JSON, in which case the elbo_ratio n_t is chosen from
  that file's records (a different model and batch shape: the output says which source was used);
- wall time: the whole `train()` call (actor start-up, before/after evaluation, RL, checkpoint)
  and the RL loop alone (sum of `time/step`).

Outputs: a printed table, `--json`, `docs/paper_small.md` (the table), `docs/paper_small_accuracy.png`
(accuracy vs n_t, BGPO with error bars, elbo_ratio and diffu-GRPO as marked points) and
`docs/learner_memory.png` (memory vs n_t for bgpo and elbo_ratio: the learner benchmark's JSON and
this run's own shape). With `--smoke` the report files go under the smoke output folder instead.

What it does not do: tune anything per objective (every configuration gets the default learning
rate and sampler), or claim significance: with 200 evaluation puzzles one binomial standard error
is about 3.5 points, and two seeds give a crude spread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cluster.config import RunConfig, dump_config, load_config  # noqa: E402

EVAL_SETS = ("test", "heldout")
BGPO_N_T = (1, 4, 16)
MEMORY_GRID = (1, 2, 4, 8, 16)  # elbo_ratio n_t candidates (must include BGPO's largest n_t)
DEFAULT_LEARNER_JSON = ROOT / "benchmarks" / "results" / "learner_memory_cpu.json"


@dataclass(frozen=True)
class Variant:
    """One trained configuration."""

    label: str  # row name in the table, e.g. "bgpo n_t=16"
    objective: str  # learner.objective
    n_t: int  # learner.n_t (diffu_grpo ignores it)

    @property
    def slug(self) -> str:
        return f"{self.objective}-nt{self.n_t}" if self.objective != "diffu_grpo" else "diffu_grpo"


def variants_for(elbo_n_t: int) -> list[Variant]:
    return [*(Variant(f"bgpo n_t={n}", "bgpo", n) for n in BGPO_N_T),
            Variant(f"elbo_ratio n_t={elbo_n_t}", "elbo_ratio", elbo_n_t),
            Variant("diffu-GRPO", "diffu_grpo", 1)]


# ---- configs ------------------------------------------------------------------------------------


def base_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """Settings every run of one seed shares (warm start and RL alike)."""
    return [
        f"seed={seed}",
        f"output_dir={args.out_dir}",
        f"trainer.prompts_per_step={args.prompts}",
        f"trainer.eval_limit={args.eval_limit}",
        *(["warmup.steps=" + str(args.warmup_steps)] if args.warmup_steps is not None else []),
    ]


def warm_config(args: argparse.Namespace, seed: int) -> RunConfig:
    return load_config(args.config, [*base_overrides(args, seed), f"run_name=warm-seed{seed}",
                                     "trainer.total_steps=0"])


def rl_config(args: argparse.Namespace, seed: int, variant: Variant, policy_dir: Path) -> RunConfig:
    return load_config(args.config, [
        *base_overrides(args, seed),
        f"run_name={variant.slug}-seed{seed}",
        f"model.name_or_path={policy_dir}",
        "warmup.steps=0",  # the warm start is in the checkpoint
        f"trainer.total_steps={args.steps}",
        f"learner.objective={variant.objective}",
        f"learner.n_t={variant.n_t}",
    ])


# ---- runs ---------------------------------------------------------------------------------------


def _finished(config: RunConfig) -> dict | None:
    """The summary of a finished run made with exactly this config, else None."""
    run_dir = Path(config.run_dir)
    resolved, summary, timing = (run_dir / n for n in ("config.resolved.yaml", "summary.json", "paper_small_time.json"))
    if not (resolved.exists() and summary.exists() and timing.exists()):
        return None
    if resolved.read_text() != dump_config(config):
        return None
    return {**json.loads(summary.read_text()), **json.loads(timing.read_text())}


def run_or_reuse(config: RunConfig, reuse: bool) -> dict:
    """`train(config)` in a clean run folder, or the stored summary of an identical finished run.
    Adds `wall_seconds` (the whole train() call) and `reused`."""
    from cluster.launch import train

    if reuse and (done := _finished(config)) is not None:
        return {**done, "reused": True}
    run_dir = Path(config.run_dir)
    if run_dir.exists():  # a stale or different run: metrics.jsonl appends, so start clean
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    summary = train(config)
    timing = {"wall_seconds": time.perf_counter() - start}
    (run_dir / "paper_small_time.json").write_text(json.dumps(timing))
    return {**summary, **timing, "reused": False}


def loop_times(run_dir: Path) -> dict:
    """RL-loop seconds (sum of time/step), learner seconds and the learner's max RSS from metrics."""
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "time/step" in r]
    return {
        "rl_seconds": sum(r["time/step"] for r in steps),
        "learner_seconds": sum(r["perf/step_seconds"] for r in steps),
        "learner_max_rss_bytes": max((r["perf/peak_memory_bytes"] for r in steps), default=None),
        "reward_first": steps[0]["reward/mean"] if steps else None,
        "reward_last": steps[-1]["reward/mean"] if steps else None,
    }


# ---- memory -------------------------------------------------------------------------------------


def measure_one(config: RunConfig) -> dict:
    """Child process: peak live tensor bytes of one learner step at the run's shape (the method
    of benchmarks/learner_memory.py: warm-up step with n_t = 1, then the measured step)."""
    import importlib.util

    from cluster.data import encode_prompts, generated_train_and_heldout, prompt_text
    from cluster.policy_factory import build_policy, load_tokenizer
    from learner import LearnerWorker, build_train_batch, draw_masks

    spec = importlib.util.spec_from_file_location("learner_memory", ROOT / "benchmarks" / "learner_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    torch.set_num_threads(2)
    policy = build_policy(config)
    tok = load_tokenizer(config)
    rows, _ = generated_train_and_heldout(config.task, config.seed)
    prompt_len = max(len(p) for p in encode_prompts(
        [prompt_text(config.task.name, r, config.task.prompt_style, tok, config.task.preset) for r in rows], tok))
    # Two of the run's micro-batches, not the whole B x G batch: the peak is reached inside a
    # micro-batch once an earlier one's gradients exist; further micro-batches only repeat it (the
    # batch-level tensors, masks and ell_old, are a few KiB), and the tracker is slow.
    group = config.rollout.group_size
    n = min(config.trainer.prompts_per_step * group, 2 * config.learner.micro_batch_size)
    gen_len = config.rollout.sampling.gen_length
    g = torch.Generator().manual_seed(0)
    vocab = len(policy.tokenizer)
    batch = build_train_batch(
        [torch.randint(5, vocab, (prompt_len,), generator=g).tolist() for _ in range(n)],
        [torch.randint(5, vocab, (gen_len,), generator=g).tolist() for _ in range(n)],
        torch.rand(n, generator=g).tolist(), [i // group for i in range(n)], pad_id=policy.pad_id)
    learner = LearnerWorker(policy, config.learner, seed=config.seed)
    n_t = config.learner.n_t
    gen = torch.Generator().manual_seed(1)
    learner.step(replace(batch, masks=draw_masks(n, 1, batch.response_length, gen)))
    measured = replace(batch, masks=draw_masks(n, n_t, batch.response_length, gen))
    tracker = bench.LiveTensorPeak()
    start = time.perf_counter()
    with tracker:
        learner.step(measured)
    return {"objective": config.learner.objective, "n_t": n_t, "peak_bytes": tracker.peak,
            "step_seconds": time.perf_counter() - start, "measured_rows": n,
            "batch": config.trainer.prompts_per_step * group,
            "micro_batch_size": config.learner.micro_batch_size, "prompt_length": prompt_len,
            "response_length": gen_len, "params": sum(p.numel() for p in policy.parameters())}


def _measure(args: argparse.Namespace, objective: str, n_t: int) -> dict:
    """One (objective, n_t) in a fresh subprocess, as benchmarks/learner_memory.py does."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--config", args.config or "",
           "--prompts", str(args.prompts), "--child-memory", f"{objective}:{n_t}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement {objective} n_t={n_t} failed:\n{out.stderr[-3000:]}")
    record = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[memory] {objective:<10} n_t={n_t:<3} peak {record['peak_bytes'] / 2**20:8.1f} MiB "
          f"({record['step_seconds']:.0f} s tracked step)", flush=True)
    return record


def measure_memory(args: argparse.Namespace) -> list[dict]:
    """bgpo at BGPO_N_T (16 is the budget), diffu_grpo, and elbo_ratio up the MEMORY_GRID until
    the first n_t that no longer fits (peak memory grows with n_t; the tracker costs about 10x a
    plain step, so nothing past that point is measured)."""
    records = [_measure(args, "bgpo", n) for n in sorted(BGPO_N_T, reverse=True)]
    budget = peak_of(records, "bgpo", max(BGPO_N_T))
    for n_t in MEMORY_GRID:
        records.append(_measure(args, "elbo_ratio", n_t))
        if records[-1]["peak_bytes"] > budget:
            break
    records.append(_measure(args, "diffu_grpo", 1))
    return records


def previous_memory(args: argparse.Namespace) -> list[dict] | None:
    """The run-shape records of an earlier invocation's --json, if it measured the same settings."""
    if args.no_reuse or args.json is None or not args.json.exists():
        return None
    old = json.loads(args.json.read_text())
    same = (old["settings"]["prompts_per_step"] == args.prompts
            and old["settings"]["config"] == (args.config or "embedded tiny-sudoku"))
    if not same:
        return None
    print(f"[memory] reusing the run-shape measurements stored in {args.json}", flush=True)
    return old["memory"]["run_shape_records"]


def peak_of(records: list[dict], objective: str, n_t: int) -> int | None:
    found = [r["peak_bytes"] for r in records if r["objective"] == objective and r["n_t"] == n_t
             and not r.get("oom")]
    return found[0] if found else None


def pick_elbo_n_t(records: list[dict]) -> tuple[int, int]:
    """(largest n_t whose elbo_ratio peak <= bgpo's peak at n_t = 16, that budget in bytes)."""
    budget = peak_of(records, "bgpo", 16)
    if budget is None:
        raise ValueError("the memory records have no bgpo n_t=16 entry to use as the budget")
    fits = [r["n_t"] for r in records if r["objective"] == "elbo_ratio" and not r.get("oom")
            and r["peak_bytes"] <= budget]
    if not fits:
        raise ValueError("no elbo_ratio n_t fits in the memory of bgpo at n_t=16 (not even n_t=1)")
    return max(fits), budget


# ---- aggregation and reporting ------------------------------------------------------------------


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for a single seed)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict], variants: list[Variant], memory: list[dict]) -> list[dict]:
    rows = []
    budget = peak_of(memory, "bgpo", 16)
    for v in variants:
        mine = [r for r in runs if r["label"] == v.label]
        if not mine:
            continue
        row = {"label": v.label, "objective": v.objective, "n_t": v.n_t if v.objective != "diffu_grpo" else None,
               "seeds": [r["seed"] for r in mine]}
        for name in EVAL_SETS:
            after = [r["after"][f"{name}_accuracy"] for r in mine]
            gain = [r["after"][f"{name}_accuracy"] - r["before"][f"{name}_accuracy"] for r in mine]
            row[f"{name}_after"], row[f"{name}_after_sd"] = spread(after)
            row[f"{name}_gain"], row[f"{name}_gain_sd"] = spread(gain)
            row[f"{name}_after_per_seed"] = after
        peak = peak_of(memory, v.objective, v.n_t if v.objective != "diffu_grpo" else 1)
        row["peak_bytes"] = peak
        row["peak_vs_bgpo16"] = peak / budget if peak is not None and budget else None
        for key in ("wall_seconds", "rl_seconds", "learner_seconds"):
            row[key] = statistics.fmean(r[key] for r in mine)
        rows.append(row)
    return rows


def before_summary(before: dict[int, dict]) -> dict:
    out = {}
    for name in EVAL_SETS:
        values = [b[f"{name}_accuracy"] for b in before.values()]
        out[name], out[f"{name}_sd"] = spread(values)
        out[f"{name}_per_seed"] = values
    return out


def _pct(mean: float, sd: float) -> str:
    return f"{100 * mean:5.1f} ± {100 * sd:4.1f}"


def table_lines(rows: list[dict], before: dict, markdown: bool) -> list[str]:
    head = ["configuration", "seeds", "test acc %", "Δ test", "heldout acc %", "Δ heldout",
            "learner peak MiB", "vs bgpo 16", "wall s", "RL loop s"]
    body = [["before RL (shared warm start)", str(len(before["test_per_seed"])), _pct(before["test"], before["test_sd"]), "",
             _pct(before["heldout"], before["heldout_sd"]), "", "", "", "", ""]]
    for r in rows:
        peak = f"{r['peak_bytes'] / 2**20:.1f}" if r["peak_bytes"] is not None else "-"
        ratio = f"{r['peak_vs_bgpo16']:.2f}x" if r["peak_vs_bgpo16"] is not None else "-"
        body.append([r["label"], str(len(r["seeds"])), _pct(r["test_after"], r["test_after_sd"]), f"{100 * r['test_gain']:+.1f}",
                     _pct(r["heldout_after"], r["heldout_after_sd"]), f"{100 * r['heldout_gain']:+.1f}",
                     peak, ratio, f"{r['wall_seconds']:.0f}", f"{r['rl_seconds']:.0f}"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return lines + ["| " + " | ".join(c.strip() for c in row) + " |" for row in body]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))  # noqa: E731
    return [fmt(head), *(fmt(row) for row in body)]


def settings_line(st: dict, memory_source: str, elbo_n_t: int) -> str:
    return (f"4x4 Sudoku (tiny model, compact prompts); seeds {st['seeds']}; per seed one warm start "
            f"({st['warmup_steps']} supervised steps) shared by all configurations; RL: {st['steps']} steps x "
            f"{st['prompts_per_step']} prompts x 8 samples, the config's learning rate for every objective; "
            f"accuracy = puzzles fully solved, greedy, {st['eval_limit']} puzzles per set, mean ± sample sd "
            f"over seeds; Δ = after - before per seed, averaged (points); elbo_ratio n_t = {elbo_n_t}, the largest "
            f"whose peak fits that of bgpo n_t=16 (memory source: {memory_source}); learner peak = live tensor "
            f"bytes of one learner step (benchmarks/learner_memory.py method) at this run's micro-batch; "
            f"wall = the whole train() call (start-up, two evaluations, RL, checkpoint), RL loop = sum of step times.")


# ---- plots --------------------------------------------------------------------------------------


def plot_accuracy(rows: list[dict], before: dict, elbo_n_t: int, path: Path, title: str) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    x_d1 = math.log2(max(BGPO_N_T)) + 1.5
    for ax, name, nice in zip(axes, EVAL_SETS, ("test (unseen grids)", "heldout (unseen puzzles, training grids)"), strict=True):
        ax.axhline(100 * before[name], color="grey", ls="--", lw=1, label="before RL")
        ax.axhspan(100 * (before[name] - before[f"{name}_sd"]), 100 * (before[name] + before[f"{name}_sd"]),
                   color="grey", alpha=0.15)
        bg = sorted((r for r in rows if r["objective"] == "bgpo"), key=lambda r: r["n_t"])
        if bg:
            xs = [math.log2(r["n_t"]) for r in bg]
            ax.errorbar(xs, [100 * r[f"{name}_after"] for r in bg], yerr=[100 * r[f"{name}_after_sd"] for r in bg],
                        marker="o", capsize=4, label="BGPO (mean ± sd over seeds)")
            for x, r in zip(xs, bg, strict=True):
                ax.scatter([x] * len(r[f"{name}_after_per_seed"]), [100 * a for a in r[f"{name}_after_per_seed"]],
                           s=10, color="C0", alpha=0.4)
        for r in rows:
            if r["objective"] == "elbo_ratio":
                ax.errorbar([math.log2(r["n_t"]) + 0.12], [100 * r[f"{name}_after"]], yerr=[100 * r[f"{name}_after_sd"]],
                            marker="s", color="C3", capsize=4, ls="none",
                            label=f"ELBO ratio, n_t={r['n_t']} (same memory as BGPO n_t=16)")
            if r["objective"] == "diffu_grpo":
                ax.errorbar([x_d1], [100 * r[f"{name}_after"]], yerr=[100 * r[f"{name}_after_sd"]],
                            marker="^", color="C2", capsize=4, ls="none", label="diffu-GRPO")
        ticks = [math.log2(n) for n in BGPO_N_T]
        ax.set_xticks([*ticks, x_d1], [*(str(n) for n in BGPO_N_T), "diffu-\nGRPO"])
        ax.set_xlabel("n_t (MC samples per response)")
        ax.set_title(nice, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy after RL, % solved")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_memory(panels: list[tuple[str, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, records) in zip(axes[0], panels, strict=True):
        for objective, style in (("bgpo", "o-"), ("elbo_ratio", "s-")):
            pts = sorted((r["n_t"], r["peak_bytes"] / 2**20) for r in records
                         if r["objective"] == objective and not r.get("oom"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=objective)
        ax.set_xscale("log", base=2)
        ns = sorted({r["n_t"] for r in records if r["objective"] in ("bgpo", "elbo_ratio")})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("n_t (MC samples per response)")
        ax.set_ylabel("learner step peak memory, MiB")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learner_json_title(records: list[dict]) -> str:
    params = next((r["params"] for r in records if "params" in r), None)
    device = next((r.get("device") for r in records), "?")
    size = f"{params / 1e6:.1f}M params, " if params else ""
    return f"benchmarks/learner_memory.py defaults ({size}{device})"


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML or preset (default: the embedded tiny-sudoku run)")
    p.add_argument("--seeds", type=int, default=2, help="number of seeds (0..N-1); each gets its own warm start")
    p.add_argument("--steps", type=int, default=40, help="RL steps per configuration")
    p.add_argument("--prompts", type=int, default=16, help="prompts per RL step (x group_size samples)")
    p.add_argument("--eval-limit", type=int, default=200, help="puzzles per evaluation set")
    p.add_argument("--warmup-steps", type=int, default=None, help="override warmup.steps (default: the config's)")
    p.add_argument("--memory-json", type=Path, default=None,
                   help="learner_memory.py JSON to choose the elbo_ratio n_t from (default: measure at this run's shape)")
    p.add_argument("--learner-json", type=Path, default=DEFAULT_LEARNER_JSON,
                   help="learner_memory.py JSON for the left panel of learner_memory.png (skipped if missing)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/paper_small"), help="run folders go here")
    p.add_argument("--report-dir", type=Path, default=None, help="md and png outputs (default docs/; smoke: OUT_DIR/report)")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    p.add_argument("--no-reuse", action="store_true", help="retrain even when an identical finished run exists")
    p.add_argument("--smoke", action="store_true",
                   help="2 RL steps of 4 prompts, 16 eval puzzles, 20 warm-up steps: checks the script")
    p.add_argument("--report-only", action="store_true", help="redraw the table and plots from --json, no training")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_limit, args.prompts = 2, 16, 4
        args.warmup_steps = 20 if args.warmup_steps is None else args.warmup_steps
        if args.out_dir == Path("runs/paper_small"):
            args.out_dir = Path("runs/paper_small_smoke")
    args.config = args.config or None
    args.out_dir = args.out_dir.resolve()
    args.report_dir = args.report_dir or (args.out_dir / "report" if args.smoke else ROOT / "docs")
    return args


def init_ray() -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)


def write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        if args.json is None:
            raise SystemExit("--report-only needs --json (the file a finished run wrote)")
        payload = json.loads(args.json.read_text())
        if payload["partial"]:  # an interrupted or still running benchmark: what finished so far
            if not payload["runs"]:
                raise SystemExit(f"{args.json} holds no finished RL run yet")
            mem = payload["memory"]
            payload["summary"] = summarise(payload["runs"], variants_for(mem["elbo_ratio_n_t"]),
                                           mem["run_shape_records"])
            payload["before_summary"] = before_summary(payload["before"])
        report(payload, args.report_dir, args.learner_json)
        return 0
    if args.child_memory:  # child: one memory measurement, one JSON line
        objective, n_t = args.child_memory.split(":")
        cfg = load_config(args.config, [f"trainer.prompts_per_step={args.prompts}",
                                        f"learner.objective={objective}", f"learner.n_t={n_t}"])
        print(json.dumps(measure_one(cfg)))
        return 0

    seeds = list(range(args.seeds))
    started = time.perf_counter()
    # 1. Memory: the budget is BGPO's peak at n_t = 16; elbo_ratio gets the largest n_t that fits.
    run_shape = previous_memory(args) or measure_memory(args)
    if args.memory_json:
        chooser = json.loads(args.memory_json.read_text())
        memory_source = f"{args.memory_json} (learner_memory.py, its own model and batch)"
    else:
        chooser = run_shape
        memory_source = "measured here at this run's model and batch"
    elbo_n_t, budget = pick_elbo_n_t(chooser)
    print(f"[memory] budget = bgpo n_t=16 peak {budget / 2**20:.1f} MiB ({memory_source}); "
          f"elbo_ratio runs at n_t={elbo_n_t}", flush=True)
    variants = variants_for(elbo_n_t)

    init_ray()
    payload: dict = {"partial": True, "settings": {
        "seeds": seeds, "steps": args.steps, "prompts_per_step": args.prompts, "eval_limit": args.eval_limit,
        "config": args.config or "embedded tiny-sudoku", "smoke": args.smoke, "cpu_count": os.cpu_count(),
        "warmup_steps": warm_config(args, seeds[0]).warmup.steps},
        "memory": {"source": memory_source, "budget_bytes": budget, "elbo_ratio_n_t": elbo_n_t,
                   "run_shape_records": run_shape,
                   "chooser_records": chooser if args.memory_json else "run_shape_records"},
        "before": {}, "runs": []}
    for seed in seeds:
        wcfg = warm_config(args, seed)
        warm = run_or_reuse(wcfg, reuse=not args.no_reuse)
        policy_dir = Path(warm["checkpoint"]) / "policy"
        payload["before"][seed] = {**warm["before"], "warm_wall_seconds": warm["wall_seconds"],
                                   "warmup_steps": wcfg.warmup.steps, "reused": warm["reused"]}
        print(f"[seed {seed}] warm start {'reused' if warm['reused'] else 'made'} ({warm['wall_seconds']:.0f} s): "
              f"before RL test {warm['before']['test_accuracy']:.3f} heldout {warm['before']['heldout_accuracy']:.3f}",
              flush=True)
        for v in variants:
            cfg = rl_config(args, seed, v, policy_dir)
            summary = run_or_reuse(cfg, reuse=not args.no_reuse)
            for name in EVAL_SETS:  # the RL run re-evaluates the same checkpoint: must agree
                if summary["before"][f"{name}_accuracy"] != warm["before"][f"{name}_accuracy"]:
                    print(f"[warn] {v.label} seed {seed}: before-RL {name} accuracy "
                          f"{summary['before'][f'{name}_accuracy']} differs from the warm start's "
                          f"{warm['before'][f'{name}_accuracy']}", flush=True)
            record = {"label": v.label, "objective": v.objective, "n_t": v.n_t, "seed": seed,
                      "before": summary["before"], "after": summary["after"], "steps": summary["steps"],
                      "wall_seconds": summary["wall_seconds"], "reused": summary["reused"],
                      "run_dir": os.path.relpath(cfg.run_dir), **loop_times(Path(cfg.run_dir))}
            payload["runs"].append(record)
            write_json(args.json, payload)
            print(f"[seed {seed}] {v.label:<18} test {record['before']['test_accuracy']:.3f} -> "
                  f"{record['after']['test_accuracy']:.3f}  heldout {record['before']['heldout_accuracy']:.3f} -> "
                  f"{record['after']['heldout_accuracy']:.3f}  wall {record['wall_seconds']:.0f} s "
                  f"(RL {record['rl_seconds']:.0f} s){' [reused]' if record['reused'] else ''}", flush=True)

    rows = summarise(payload["runs"], variants, run_shape)
    payload.update(partial=False, summary=rows, before_summary=before_summary(payload["before"]),
                   total_seconds=time.perf_counter() - started)
    write_json(args.json, payload)
    report(payload, args.report_dir, args.learner_json)
    return 0


def report(payload: dict, report_dir: Path, learner_json: Path | None) -> None:
    """Print the table and write the markdown and the two plots from a finished payload."""
    rows, before, st, mem = payload["summary"], payload["before_summary"], payload["settings"], payload["memory"]
    info = settings_line(st, mem["source"], mem["elbo_ratio_n_t"])
    if payload["partial"]:
        done = ", ".join(f"{r['label']} seed {r['seed']}" for r in payload["runs"])
        info = f"**PARTIAL RESULTS** (the benchmark did not finish; runs done: {done}). " + info
    print()
    print(info)
    print("\n".join(table_lines(rows, before, markdown=False)))
    total = f"{payload['total_seconds'] / 60:.1f} min" if "total_seconds" in payload else "unfinished"
    print(f"total {total}")

    report_dir.mkdir(parents=True, exist_ok=True)
    md = ["<!-- generated by benchmarks/paper_small.py; do not edit by hand -->", "", info, "",
          *table_lines(rows, before, markdown=True), "",
          f"Total wall time of the benchmark: {total} "
          f"({st['cpu_count']} CPU cores, shared with other jobs).", ""]
    (report_dir / "paper_small.md").write_text("\n".join(md))
    title = (("PARTIAL: " if payload["partial"] else "") + f"4x4 Sudoku, tiny dLLM: {st['steps']} RL steps x {st['prompts_per_step']} prompts "
             f"from one warm start per seed (seeds {st['seeds']})")
    plot_accuracy(rows, before, mem["elbo_ratio_n_t"], report_dir / "paper_small_accuracy.png", title)
    panels = []
    if learner_json is not None and learner_json.exists():
        learner = json.loads(learner_json.read_text())
        panels.append((learner_json_title(learner), learner))
    else:
        print(f"[memory] {learner_json} not found: learner_memory.png shows this run's shape only")
    run_shape = mem["run_shape_records"]
    shape = run_shape[0]
    panels.append((f"paper_small's learner ({shape['params'] / 1e6:.2f}M params, micro-batch "
                   f"{shape['micro_batch_size']}, L={shape['response_length']}, cpu)", run_shape))
    plot_memory(panels, report_dir / "learner_memory.png")
    print(f"wrote {report_dir / 'paper_small.md'}, paper_small_accuracy.png, learner_memory.png")


if __name__ == "__main__":
    sys.exit(main())
