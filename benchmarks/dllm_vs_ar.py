"""The tiny diffusion LM with BGPO against the tiny autoregressive LM with GRPO, same budget.

Both arms run `python -m cluster.launch` (the embedded Sudoku run, its own local Ray each, one
after another) with the same task, seed, warm-start steps, prompts per step, samples per prompt,
verifier, RL steps and evaluation rows; only the model, sampler and objective differ:

    dllm: model.name_or_path=tiny         rollout.engine=diffusion  learner.objective=bgpo
    ar:   model.name_or_path=tiny-causal  rollout.engine=hf|vllm    learner.objective=grpo

"tiny" and "tiny-causal" have the same shapes and parameter count (the causal one is the same
Llama with the causal mask). Each run evaluates held-out accuracy (greedy) before RL, every
--eval-every steps and after; the curves are plotted against samples trained on (step x B x G)
and against RL wall time (the sum of the steps' time/step: rollout, reward, train, weight sync;
evaluation and warm start excluded). Afterwards the rollout speed of the AR policy's final
checkpoint is measured side by side: engine hf and, when .venv-vllm exists, vLLM (plus the
diffusion sampler on the dllm checkpoint), on the same prompts, completion tokens per second.

    python benchmarks/dllm_vs_ar.py                     # 3 seeds, writes docs/ and benchmarks/results/
    python benchmarks/dllm_vs_ar.py --quick             # smoke run: 1 seed, 2 steps, into --out only
    python benchmarks/dllm_vs_ar.py --aggregate         # only re-read the runs in --out

Load averages (`uptime`) before and after go into the JSON and the markdown: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARMS = {
    "dllm": {"label": "tiny diffusion LM, BGPO", "overrides": ["model.name_or_path=tiny", "rollout.engine=diffusion",
                                                                "learner.objective=bgpo"]},
    "ar": {"label": "tiny causal LM, GRPO", "overrides": ["model.name_or_path=tiny-causal", "learner.objective=grpo"]},
}
QUICK = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.num_heads=2", "task.num_train=200",
         "rollout.num_workers=1", "learner.n_t=2"]


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def overrides(args, arm: str, seed: int) -> list[str]:
    lr = args.lr_dllm if arm == "dllm" else args.lr_ar
    out = [f"run_name={arm}-seed{seed}", f"seed={seed}", f"output_dir={args.out}", "task.name=sudoku",
           f"warmup.steps={args.warmup}", f"trainer.total_steps={args.steps}",
           f"trainer.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
           f"trainer.eval_every={args.eval_every}", f"trainer.eval_limit={args.eval_limit}",
           f"task.num_test={args.eval_limit}", f"learner.lr={lr}", *ARMS[arm]["overrides"]]
    if arm == "ar":
        out.append(f"rollout.engine={args.ar_engine}")
    return out + (QUICK if args.quick else []) + args.extra


def run_one(args, arm: str, seed: int) -> float:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    log = Path(args.out) / f"{arm}-seed{seed}.log"
    cmd = [sys.executable, "-m", "cluster.launch", *overrides(args, arm, seed)]
    print(f"[run] {arm} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{arm} seed {seed} failed (exit {code}); see {log}")
    return time.time() - start


def curve(run_dir: Path, samples_per_step: int) -> list[dict]:
    """(step, samples, RL seconds, held-out and test accuracy) at every evaluation of a run."""
    points, seconds = [], 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        seconds += record.get("time/step", 0.0)
        if "eval/heldout_accuracy" in record:
            point = {"step": record["step"], "samples": record["step"] * samples_per_step, "rl_seconds": seconds,
                     "heldout_accuracy": record["eval/heldout_accuracy"], "test_accuracy": record["eval/test_accuracy"]}
            if points and points[-1]["step"] == point["step"]:
                points[-1] = point  # the after-RL evaluation repeats the last periodic one
            else:
                points.append(point)
    return points


def parameter_counts(args) -> dict:
    from cluster.config import load_config
    from cluster.policy_factory import build_policy

    counts = {}
    for arm in ARMS:
        config = load_config(None, overrides(args, arm, 0))
        counts[arm] = sum(p.numel() for p in build_policy(config).parameters())
    return counts


def engine_speed(args, seeds: list[int]) -> dict:
    """Completion tokens per second of each engine on the final checkpoints of seed `seeds[0]`:
    the same prompts (held-out), the same G and sampling settings, one untimed warm-up call."""
    import torch

    from cluster.config import load_config
    from cluster.policy_factory import build_policy
    from cluster.run_data import RunData
    from rollout.causal_sampler import CausalSampler, CausalSamplingConfig
    from rollout.vllm_client import DEFAULT_PYTHON, VLLMRolloutClient
    from rollout.worker import RolloutWorker

    seed = seeds[0]
    ar_config = load_config(None, overrides(args, "ar", seed))
    data = RunData(ar_config, log=lambda _: None)
    prompts = data.eval_prompt_ids["heldout"][: args.speed_prompts]
    torch.set_num_threads(os.cpu_count() or 1)
    sampling = CausalSamplingConfig.from_sampling(ar_config.rollout.sampling)
    engines = {}

    def ar_checkpoint() -> str:
        return str(Path(args.out) / f"ar-seed{seed}" / "checkpoints" / f"global_step_{args.steps}" / "policy")

    engines["hf"] = CausalSampler("hf", build_policy(ar_config, path=ar_checkpoint()), sampling,
                                  micro_batch_size=ar_config.rollout.micro_batch_size)
    if (DEFAULT_PYTHON.parent.parent / ".bgpo-vllm-installed").exists():
        engines["vllm"] = VLLMRolloutClient("vllm", ar_checkpoint(), sampling)
    dllm_config = load_config(None, overrides(args, "dllm", seed))
    dllm_path = str(Path(args.out) / f"dllm-seed{seed}" / "checkpoints" / f"global_step_{args.steps}" / "policy")
    engines["diffusion"] = RolloutWorker("diffusion", build_policy(dllm_config, path=dllm_path),
                                         dllm_config.rollout.sampling, micro_batch_size=dllm_config.rollout.micro_batch_size)
    out = {"prompts": len(prompts), "group_size": args.group, "gen_length": sampling.gen_length,
           "temperature": sampling.temperature, "load_before": load_average()}
    for name, engine in engines.items():
        engine.generate(prompts[:4], 2, seed=0)  # warm-up: lazy inits, first-call compilation
        tokens, seconds = 0, 0.0
        for rep in range(args.speed_reps):
            start = time.perf_counter()
            rollouts = engine.generate(prompts, args.group, seed=rep + 1)
            seconds += time.perf_counter() - start
            # Causal engines stop at EOS: count generated tokens; the diffusion sampler fills all L.
            tokens += sum(getattr(r, "num_tokens", 0) or len(r.response_ids) for r in rollouts)
        out[name] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
        if hasattr(engine, "close"):
            engine.close()
    out["load_after"] = load_average()
    if "vllm" in out:
        out["vllm_over_hf"] = out["vllm"]["tokens_per_s"] / out["hf"]["tokens_per_s"]
    return out


def summarize(curves: dict) -> dict:
    """Per arm: mean / sd / per-seed held-out accuracy before and after RL, and RL seconds."""
    table = {}
    for arm, by_seed in curves.items():
        before = [c[0]["heldout_accuracy"] for c in by_seed.values()]
        after = [c[-1]["heldout_accuracy"] for c in by_seed.values()]
        secs = [c[-1]["rl_seconds"] for c in by_seed.values()]
        sd = statistics.stdev if len(after) > 1 else (lambda _: 0.0)
        table[arm] = {"before_mean": statistics.mean(before), "after_mean": statistics.mean(after),
                      "after_sd": sd(after), "gain_mean": statistics.mean(a - b for a, b in zip(after, before, strict=True)),
                      "before": before, "after": after, "rl_seconds_mean": statistics.mean(secs)}
    return table


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, by_seed in curves.items():
        runs = list(by_seed.values())
        n = min(len(c) for c in runs)
        for ax, key in zip(axes, ("samples", "rl_seconds"), strict=True):
            x = [statistics.mean(c[i][key] for c in runs) for i in range(n)]
            ys = [[c[i]["heldout_accuracy"] * 100 for c in runs] for i in range(n)]
            line, = ax.plot(x, [statistics.mean(y) for y in ys], marker="o", label=ARMS[arm]["label"])
            ax.fill_between(x, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("samples trained on (step x prompts x group)")
    axes[1].set_xlabel("RL wall time, s (evaluation and warm start excluded)")
    for ax in axes:
        ax.set_ylabel("held-out accuracy, % (greedy)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title + " (mean over seeds, band: min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(record: dict, plot_name: str) -> str:
    s = record["settings"]
    lines = [
        "# Tiny diffusion LM (BGPO) vs tiny autoregressive LM (GRPO)",
        "",
        f"Produced by `{record['command']}` ({record['finished']})"
        + (": runs made by the same command without --aggregate, then read back." if s.get("aggregate") else "."),
        f"Same task (embedded 4x4 Sudoku, compact prompts), {s['warmup']} warm-start steps, {s['steps']} RL steps of "
        f"{s['prompts']} prompts x {s['group']} samples, same verifier, held-out accuracy on {s['eval_limit']} rows "
        f"(greedy), seeds {s['seeds']}. Learning rates: BGPO {s['lr_dllm']}, GRPO {s['lr_ar']}; AR rollouts by engine "
        f"`{s['ar_engine']}`. Parameters: dllm {record['parameters']['dllm']:,}, ar {record['parameters']['ar']:,}.",
        f"Load average: before `{record['load_before']}`; after `{record['load_after']}` (2 shared cores).",
        "",
        "| arm | held-out before RL | after RL (mean ± sd) | per seed after | gain | RL wall time |",
        "|---|---|---|---|---|---|",
    ]
    for arm, row in record["table"].items():
        per_seed = ", ".join(f"{100 * a:.1f}" for a in row["after"])
        lines.append(f"| {ARMS[arm]['label']} | {100 * row['before_mean']:.1f}% | {100 * row['after_mean']:.1f}% ± "
                     f"{100 * row['after_sd']:.1f} | {per_seed} | {100 * row['gain_mean']:+.1f} | "
                     f"{row['rl_seconds_mean']:.0f} s |")
    lines += ["", f"![held-out accuracy against samples and wall time]({plot_name})", ""]
    speed = record.get("engine_speed")
    if speed:
        lines += [f"Rollout speed on the final checkpoints (seed {s['seeds'][0]}), {speed['prompts']} held-out prompts "
                  f"x {speed['group_size']}, temperature {speed['temperature']}, completion tokens per second "
                  f"(load before `{speed['load_before']}`):", "", "| engine | tokens/s |", "|---|---|"]
        for name in ("vllm", "hf", "diffusion"):
            if name in speed:
                lines.append(f"| {name} | {speed[name]['tokens_per_s']:.0f} |")
        if "vllm_over_hf" in speed:
            lines += ["", f"vLLM / engine hf: {speed['vllm_over_hf']:.1f}x."]
        else:
            lines += ["", "vLLM not measured: no .venv-vllm (`make setup-vllm`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 steps, a smaller model")
    parser.add_argument("--aggregate", action="store_true", help="only read the runs already in --out")
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; quick: 0)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default 30; quick: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-start steps (default 300; quick: 20)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default 16; quick: 4)")
    parser.add_argument("--group", type=int, default=None, help="samples per prompt (default 8; quick: 4)")
    parser.add_argument("--eval-every", type=int, default=None, help="default 10; quick: 1")
    parser.add_argument("--eval-limit", type=int, default=None, help="held-out rows (default 100; quick: 8)")
    parser.add_argument("--lr-dllm", type=float, default=5e-5, help="BGPO lr (the main job's)")
    parser.add_argument("--lr-ar", type=float, default=5e-5, help="GRPO lr (default: the same as BGPO)")
    parser.add_argument("--ar-engine", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--speed-prompts", type=int, default=32)
    parser.add_argument("--speed-reps", type=int, default=3)
    parser.add_argument("--out", default=None, help="run folders (default runs/dllm_vs_ar, quick: runs/dllm_vs_ar_quick)")
    parser.add_argument("--json", default=None, help="default benchmarks/results/dllm_vs_ar.json (quick: in --out)")
    parser.add_argument("--doc", default=None, help="default docs/dllm_vs_ar.md (quick: in --out)")
    parser.add_argument("extra", nargs="*", help="more dotted overrides for both arms")
    args = parser.parse_args()
    q = args.quick
    defaults = {"seeds": "0" if q else "0,1,2", "steps": 2 if q else 30, "warmup": 20 if q else 300,
                "prompts": 4 if q else 16, "group": 4 if q else 8, "eval_every": 1 if q else 10,
                "eval_limit": 8 if q else 100, "out": "runs/dllm_vs_ar_quick" if q else "runs/dllm_vs_ar"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = str(Path(args.out).resolve())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json or (Path(args.out) / "dllm_vs_ar.json" if q else REPO / "benchmarks/results/dllm_vs_ar.json"))
    doc_path = Path(args.doc or (Path(args.out) / "dllm_vs_ar.md" if q else REPO / "docs/dllm_vs_ar.md"))
    plot_path = doc_path.with_suffix(".png")
    seeds = [int(s) for s in args.seeds.split(",")]

    record = {"command": "python benchmarks/dllm_vs_ar.py " + " ".join(sys.argv[1:]), "load_before": load_average(),
              "settings": {k: getattr(args, k) for k in ("steps", "warmup", "prompts", "group", "eval_every",
                                                          "eval_limit", "lr_dllm", "lr_ar", "ar_engine", "quick", "aggregate",
                                                          "extra")}}
    record["settings"]["seeds"] = seeds
    record["parameters"] = parameter_counts(args)
    seconds = {}
    if not args.aggregate:
        for seed in seeds:
            for arm in ARMS:
                seconds[f"{arm}-seed{seed}"] = run_one(args, arm, seed)
    record["run_seconds"] = seconds
    curves = {arm: {seed: curve(Path(args.out) / f"{arm}-seed{seed}", args.prompts * args.group) for seed in seeds}
              for arm in ARMS}
    record["curves"] = curves
    record["table"] = summarize(curves)
    record["engine_speed"] = engine_speed(args, seeds)
    record["load_after"] = load_average()
    record["finished"] = time.strftime("%Y-%m-%d %H:%M")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=2))
    plot(curves, plot_path, f"Sudoku 4x4, {args.prompts} prompts x {args.group} samples per step")
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(markdown(record, plot_path.name))
    print(doc_path.read_text())
    print(f"wrote {json_path}, {doc_path}, {plot_path}")


if __name__ == "__main__":
    main()
