"""Evaluation of a policy on a task's rows, spread over rollout actors and scored by verifiers.

Two users share `generate_and_score`: the in-training evaluation (`RayPools.evaluate`) and the
`bgpo eval` command (`evaluate_checkpoint`, `main`). Items go out as eval requests with group
size 1 through the same `RolloutDispatcher` as training rollouts (deadlines, one re-dispatch, then
drop), are decoded with the config's `rollout.eval_sampling` and scored by verifier actors.

`bgpo eval` defaults are the paper's evaluation settings (bgpo.md sections 6 and 7), picked from
the task and the checkpoint's kind (see `default_settings`). It writes into `--out`:
`results.jsonl` (one line per item, in row order, appended as waves of items finish),
`summary.json` and `summary.md`. It does not train, compare checkpoints or download data sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cluster.contracts import RolloutRequest
from cluster.dispatch import RolloutDispatcher
from cluster.eval_report import item_records, markdown_table, summarize
from cluster.scoring import Scorer
from rewards.types import RewardResult

# Response length L per task (bgpo.md section 6); eval steps = L, block 32.
PAPER_GEN_LENGTH = {"gsm8k": 512, "math": 512, "humaneval": 512, "mbpp": 512,
                    "countdown": 256, "sudoku": 256}
PAPER_BLOCK_LENGTH = 32
COMPACT_TASKS = ("sudoku", "countdown")  # tasks the tiny model is trained on in compact form
COMPACT_LENGTH = 16  # tiny compact tasks: gen_length = block_length = steps = 16 (configs/tiny-*.yaml)
GENERATED_TEST_SIZE = {"sudoku": 500, "countdown": 256}  # the paper's test-set sizes


@dataclass
class EvalOutcome:
    """Generated and scored rows of one evaluation (or one wave of it), in row order."""

    rollouts: list = field(default_factory=list)  # rollout.types.Rollout, one per generated row
    results: list[RewardResult] = field(default_factory=list)  # one per rollout
    missing: dict[int, str] = field(default_factory=dict)  # row index -> why it has no generation
    seconds: float = 0.0  # wall-clock seconds spent generating (scoring excluded)

    def extend(self, other: EvalOutcome) -> None:
        self.rollouts += other.rollouts
        self.results += other.results
        self.missing.update(other.missing)
        self.seconds += other.seconds


def generate_and_score(dispatcher: RolloutDispatcher, scorer: Scorer, prompt_ids: list[list[int]], *, seed: int,
                       chunk_size: int | None = None,
                       on_wave: Callable[[EvalOutcome], None] | None = None) -> EvalOutcome:
    """Greedy-decode every prompt once (eval requests, group size 1) and score the completions.

    chunk_size None: one wave, the rows split round-robin into one request per rollout actor
    (the in-training evaluation). Otherwise waves of one `chunk_size`-row request per actor, each
    wave collected (every request under the dispatcher's deadline) and scored before the next, so a
    long evaluation keeps deadlines per request and reports progress through `on_wave`.
    """
    total, start = EvalOutcome(), 0
    while start < len(prompt_ids):
        workers = max(len(dispatcher.rollouts.names()), 1)
        if chunk_size is None:
            indices = list(range(start, len(prompt_ids)))
            shards = [indices[i::workers] for i in range(min(workers, len(indices)))]
        else:
            stop = min(start + workers * chunk_size, len(prompt_ids))
            shards = [list(range(i, min(i + chunk_size, stop))) for i in range(start, stop, chunk_size)]
        wave = _one_wave(dispatcher, scorer, prompt_ids, shards, seed)
        if on_wave is not None:
            on_wave(wave)
        total.extend(wave)
        start = max(i for shard in shards for i in shard) + 1
    return total


def _one_wave(dispatcher: RolloutDispatcher, scorer: Scorer, prompt_ids: list[list[int]],
              shards: list[list[int]], seed: int) -> EvalOutcome:
    inflight = [
        dispatcher.submit(RolloutRequest(step=-1, prompts=[prompt_ids[i] for i in shard], item_indices=shard,
                                     group_ids=shard, group_size=1, seed=seed, eval=True))
        for shard in shards
    ]
    start = time.perf_counter()
    rollouts = [r for out in dispatcher.collect(inflight, Counter()) for r in out.rollouts]
    seconds = time.perf_counter() - start
    rollouts.sort(key=lambda r: r.item_index)
    done = {r.item_index for r in rollouts}
    missing = {i: f"generation lost after {dispatcher.max_attempts} attempts (late or rollout actor died)"
               for shard in shards for i in shard if i not in done}
    return EvalOutcome(rollouts, scorer.score(rollouts) if rollouts else [], missing, seconds)


# ---- bgpo eval: settings ----------------------------------------------------------------------

def resolve_model(model: str) -> str:
    """A policy folder (config.json inside), a checkpoint folder (its policy/), a run folder (its
    latest checkpoint's policy/), "tiny" (a fresh untrained tiny model) or a hub name "org/name"."""
    if model == "tiny":
        return model
    path = Path(model).expanduser()
    if path.exists():
        for candidate in (path, path / "policy"):
            if (candidate / "config.json").exists():
                return str(candidate.resolve())
        latest = path / "checkpoints" / "latest"
        if latest.exists():
            policy = latest.parent / latest.read_text().strip() / "policy"
            if (policy / "config.json").exists():
                return str(policy.resolve())
        raise FileNotFoundError(f"--model {model}: no config.json there, in its policy/ folder, "
                                "or in the latest checkpoint of a run folder")
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise FileNotFoundError(f"--model {model} does not exist (and is not a hub name 'org/name')")
    return model


def checkpoint_kind(model: str) -> str:
    """tiny (the built-in bidirectional Llama), llada, dream, or the checkpoint's model_type."""
    if model == "tiny":
        return "tiny"
    config = Path(model) / "config.json"
    model_type = str(json.loads(config.read_text()).get("model_type", "")).lower() if config.exists() else ""
    for kind in ("llada", "dream"):
        if kind in model_type or kind in model.lower():
            return kind
    if model_type == "llama":
        return "tiny"
    return model_type or "unknown"


def default_settings(task: str, kind: str, prompt_style: str | None = None) -> dict:
    """The paper's evaluation settings for chat prompts; compact prompts (the default for the tiny
    model on its compact tasks) use the shape the tiny model is trained with."""
    style = prompt_style or ("compact" if kind == "tiny" and task in COMPACT_TASKS else "chat")
    if style == "compact":
        return {"prompt_style": style, "preset": "compact", "gen_length": COMPACT_LENGTH,
                "block_length": COMPACT_LENGTH}
    return {"prompt_style": style, "preset": "bgpo", "gen_length": PAPER_GEN_LENGTH[task],
            "block_length": PAPER_BLOCK_LENGTH}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgpo eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Greedy evaluation of a checkpoint on a task, spread over rollout actors on Ray.",
        epilog=(
            "Defaults follow the paper (bgpo.md 6-7): temperature 0, EOS confidence 0, block length\n"
            "32, diffusion steps = response length, response length 512 for gsm8k/math/humaneval/mbpp\n"
            "and 256 for countdown/sudoku, chat prompts, the bgpo reward preset. The checkpoint's kind\n"
            "is read from its config.json: a plain bidirectional Llama (model_type llama, the tiny\n"
            "built-in model) on sudoku/countdown defaults to the compact prompt and reward preset;\n"
            "compact prompts get gen_length = block_length = steps = 16, as the tiny model is\n"
            "trained. Tokenizers without a chat template (the tiny one) get the plain text of the\n"
            "chat messages (their contents joined by blank lines).\n"
            "Without --data, sudoku/countdown test rows are generated (500/256, or --limit);\n"
            "the other tasks need --data (parquet/jsonl rows in the d1/BGPO layout).\n"
            "Any run-config key can be overridden, e.g. rollout.eval_sampling.cache=prefix\n"
            "rewards.allow_unsandboxed=true trainer.rollout_timeout_s=7200."))
    parser.add_argument("--model", help="policy folder, checkpoints/global_step_N, run folder, hub name, or 'tiny'")
    parser.add_argument("--task", help="gsm8k, math, countdown, sudoku, humaneval or mbpp")
    parser.add_argument("--data", default=None, help="rows to evaluate: file, folder or hub dataset name")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N rows")
    parser.add_argument("--out", default=None, help="output folder (default: runs/eval/<task>-<model>)")
    parser.add_argument("--rollout-workers", type=int, default=2, help="rollout actors K (default 2)")
    parser.add_argument("--verifier-workers", type=int, default=1, help="verifier actors (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=None,
                        help="GPUs per rollout actor (default: 1 if this machine sees CUDA, else 0)")
    parser.add_argument("--gen-length", type=int, default=None, help="response length L")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: L)")
    parser.add_argument("--block-length", type=int, default=None, help="block length (default: min(32, L))")
    parser.add_argument("--prompt-style", choices=("chat", "compact"), default=None)
    parser.add_argument("--preset", default=None, help="reward preset: bgpo, d1, lenient or compact")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per request (default: rollout.micro_batch_size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="dotted run-config overrides, e.g. rollout.num_cpus=2")
    return parser


def eval_config(args: argparse.Namespace, task: str, model: str, kind: str):
    """The RunConfig the actors are built from: defaults, then the flags, then the overrides."""
    from cluster.config import load_config

    settings = default_settings(task, kind, args.prompt_style)
    gen_length = args.gen_length or settings["gen_length"]
    block = args.block_length or min(settings["block_length"], gen_length)
    gpus = args.gpus_per_worker
    if gpus is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    tiny = kind == "tiny"
    values = {
        "run_name": f"eval-{task}-{uuid.uuid4().hex[:8]}", "seed": args.seed,
        "device": "cuda" if gpus > 0 else "cpu", "model.name_or_path": model,
        "task.name": task, "task.test_path": args.data,
        "task.prompt_style": settings["prompt_style"],
        "task.preset": args.preset or settings["preset"],
        "rollout.num_workers": args.rollout_workers, "rollout.num_gpus": gpus,
        "rollout.micro_batch_size": 64 if tiny else 16,
        "rollout.eval_sampling.gen_length": gen_length, "rollout.eval_sampling.block_length": block,
        "rollout.eval_sampling.steps": args.steps or gen_length,
        "rollout.eval_sampling.temperature": 0.0, "rollout.eval_sampling.eval_mode": True,
        "rewards.num_workers": args.verifier_workers,
        "trainer.rollout_timeout_s": 600.0 if tiny else 3600.0,
    }
    from cluster.config import model_kind

    if model_kind(model) == "causal":  # the autoregressive baseline: its sampler and objective
        values.update({"rollout.engine": "hf", "learner.objective": "grpo"})
    # JSON-quoted values read back unchanged through the YAML override parser (paths included).
    defaults = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    return load_config(None, defaults + list(args.overrides))


# ---- bgpo eval: running ------------------------------------------------------------------------

def load_eval_rows(task_cfg, limit: int | None, seed: int) -> list[dict]:
    from cluster.data import generate_rows
    from rewards.datasets import load_rows

    if task_cfg.test_path:
        rows = load_rows(task_cfg.test_path, limit=limit)
    elif task_cfg.name in GENERATED_TEST_SIZE:
        rows = generate_rows(task_cfg.name, limit or GENERATED_TEST_SIZE[task_cfg.name], "test", seed)
    else:
        raise ValueError(f"task {task_cfg.name!r} needs --data (rows in the d1/BGPO layout); only "
                         f"{'/'.join(GENERATED_TEST_SIZE)} rows can be generated")
    if not rows:
        raise ValueError(f"no rows to evaluate in {task_cfg.test_path}")
    return rows


class EvalActors:
    """Rollout and verifier actors for evaluations that share a model, eval sampling settings and
    reward preset (the task itself travels with each scoring request), so several tasks can be
    evaluated without starting actors again. Use as a context manager; `close` kills them."""

    def __init__(self, config) -> None:
        from cluster.connect import connect
        from cluster.groups import RolloutPool, VerifierPool

        connect(config)
        self.config = config
        self.rollouts, self.verifiers = RolloutPool(config), VerifierPool(config)
        try:
            for _ in range(config.rollout.num_workers):
                self.rollouts.add()
            for _ in range(config.rewards.num_workers):
                self.verifiers.add()
            self.rollouts.start(config.trainer.start_timeout_s, print)
            self.verifiers.start(config.trainer.start_timeout_s, print)
        except BaseException:
            self.close()
            raise

    def check_serves(self, config) -> None:
        """ValueError unless these actors decode and score the way `config` asks."""
        mine, theirs = self.config, config
        for what, a, b in (("model", mine.model, theirs.model),
                           ("eval sampling", mine.rollout.eval_sampling, theirs.rollout.eval_sampling),
                           ("reward preset", mine.task.preset, theirs.task.preset)):
            if a != b:
                raise ValueError(f"these eval actors were built for {what} {a}, not {b}")

    def channels(self, task: str, rows: list[dict]) -> tuple[RolloutDispatcher, Scorer]:
        timeout = self.config.trainer.rollout_timeout_s

        def replace(name: str) -> str:  # weights come from the checkpoint: nothing to push
            self.rollouts.remove(name)
            new = self.rollouts.add()
            self.rollouts.ready(timeout_s=timeout)
            return new

        return (RolloutDispatcher(self.rollouts, timeout_s=timeout, on_dead_worker=replace),
                Scorer(self.verifiers, task=task, rows=rows, timeout_s=timeout))

    def close(self) -> None:
        import ray

        for name in list(self.rollouts.actors) + list(self.rollouts.joining):
            self.rollouts.remove(name)
        for handle in self.verifiers.actors.values():
            ray.kill(handle, no_restart=True)
        self.verifiers.actors.clear()

    def __enter__(self) -> EvalActors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evaluate_checkpoint(config, rows: list[dict], out: Path, *, kind: str, limit: int | None,
                        chunk_size: int | None = None, actors: EvalActors | None = None,
                        log: Callable[[str], None] = print) -> dict:
    """Evaluate `rows` and write results.jsonl, summary.json and summary.md into `out`. Uses
    `actors` when given (left running), else starts its own on Ray (connecting or starting a
    local cluster) and stops them at the end."""
    from cluster.data import encode_prompts, prompt_text
    from cluster.policy_factory import load_tokenizer

    tokenizer = load_tokenizer(config)
    task = config.task
    texts = [prompt_text(task.name, r, task.prompt_style, tokenizer, task.preset) for r in rows]
    prompt_ids = encode_prompts(texts, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    results_path.write_text("")

    def on_wave(wave: EvalOutcome) -> None:
        with results_path.open("a", encoding="utf-8") as fh:
            for record in item_records(texts, wave):
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        done = max([r.item_index for r in wave.rollouts] + list(wave.missing)) + 1
        ok = sum(r.status == "ok" for r in wave.results)
        log(f"[eval] {config.task.name}: {done}/{len(rows)} rows, {ok}/{len(wave.results)} ok in this "
            f"wave, {wave.seconds:.1f}s generating")

    own = actors is None
    actors = actors or EvalActors(config)
    try:
        actors.check_serves(config)
        outcome = generate_and_score(*actors.channels(config.task.name, rows), prompt_ids, seed=config.seed,
                                     chunk_size=chunk_size or config.rollout.micro_batch_size, on_wave=on_wave)
    finally:
        if own:
            actors.close()
    summary = summarize(item_records(texts, outcome), outcome, config, kind, limit)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(markdown_table([summary]))
    return summary


def default_out(task: str, model: str) -> Path:
    parts = [p for p in Path(model).parts if p not in ("/", "policy", "checkpoints")][-2:]
    return Path("runs") / "eval" / f"{task}-{'-'.join(parts) or 'model'}"


def main(argv: list[str] | None = None) -> int:
    """`bgpo eval`: exit 0 on success, 2 on a bad argument (named), 1 if the evaluation fails."""
    args = build_parser().parse_args(argv)
    try:
        from rewards.tasks import canonical_name

        if not args.model or not args.task:
            raise ValueError("--model and --task are required")
        task = canonical_name(args.task)
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        if args.rollout_workers < 1 or args.verifier_workers < 1:
            raise ValueError("--rollout-workers and --verifier-workers must be at least 1")
        if args.data and Path(args.data).expanduser().exists():
            args.data = str(Path(args.data).expanduser().resolve())
        model = resolve_model(args.model)
        kind = checkpoint_kind(model)
        config = eval_config(args, task, model, kind)
        from rewards import check_preset

        check_preset(task, config.task.preset)
        rows = load_eval_rows(config.task, args.limit, args.seed)[: args.limit]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_out(task, model)
    print(f"[eval] {task}: {len(rows)} rows, model {model} ({kind}), "
          f"{config.rollout.eval_sampling.model_dump()}, out {out}")
    try:
        summary = evaluate_checkpoint(config, rows, out, kind=kind, limit=args.limit,
                                      chunk_size=args.chunk_size)
    except Exception as err:  # reported with its type, exit 1; tracebacks are in the actor logs
        print(f"error: evaluation failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(markdown_table([summary]), end="")
    return 0
