"""`bgpo eval` end to end on a local Ray with a tiny saved policy, and its argument errors.

The tiny policy (hidden 32, 2 layers, untrained) answers nothing right; these tests check the
plumbing: files written, one record per row in row order, valid statuses, accuracy in [0, 1],
the paper's defaults resolved from the checkpoint kind. Sudoku goes through the CLI (`main`);
the other tasks share one set of eval actors (`EvalActors`) so the file stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from rewards import STATUSES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A run folder holding checkpoints/global_step_1/policy, as a training run saves it."""
    import torch

    from dllm import build_tiny_policy

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run")
    policy = build_tiny_policy(hidden_size=32, num_layers=2, num_heads=2, seed=0)
    policy.save_pretrained(run / "checkpoints" / "global_step_1" / "policy")
    return run / "checkpoints" / "global_step_1"


def check_outputs(out: Path, task: str, n: int) -> dict:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(n))
    for r in records:
        assert r["status"] in STATUSES
        assert set(r) >= {"index", "prompt", "completion", "score", "status", "detail", "nfe", "seconds"}
        assert isinstance(r["prompt"], str) and r["prompt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == task and summary["n"] == n
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["settings"]["temperature"] == 0.0 and summary["settings"]["eval_mode"] is True
    assert "| accuracy |" in (out / "summary.md").read_text()
    return summary


@pytest.mark.ray
@pytest.mark.slow
def test_eval_cli_sudoku_generated_rows(ray_local, tiny_checkpoint, tmp_path):
    from cluster.evaluate import main

    out = tmp_path / "sudoku"
    rc = main(["--model", str(tiny_checkpoint), "--task", "sudoku", "--limit", "6",
               "--rollout-workers", "2", "--chunk-size", "2", "--out", str(out)])
    assert rc == 0
    summary = check_outputs(out, "sudoku", 6)
    # The tiny checkpoint on sudoku gets the compact shape it was trained with.
    assert summary["kind"] == "tiny"
    assert summary["settings"]["prompt_style"] == "compact" and summary["settings"]["preset"] == "compact"
    assert (summary["settings"]["gen_length"], summary["settings"]["steps"],
            summary["settings"]["block_length"]) == (16, 16, 16)


def fixture_rows(task: str, tmp_path: Path) -> Path:
    """gsm8k/math/countdown jsonl fixtures as they are; code rows extracted from code_rows.json."""
    if task in ("humaneval", "mbpp"):
        rows = [entry["row"] for entry in json.loads((FIXTURES / "code_rows.json").read_text())[task]]
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    return FIXTURES / f"{task}.jsonl"


@pytest.mark.ray
@pytest.mark.slow
def test_eval_every_other_task_with_fixture_rows(ray_local, tiny_checkpoint, tmp_path):
    from cluster.evaluate import (
        EvalActors,
        checkpoint_kind,
        eval_config,
        evaluate_checkpoint,
        load_eval_rows,
        resolve_model,
    )

    model = resolve_model(str(tiny_checkpoint))
    kind = checkpoint_kind(model)
    assert kind == "tiny"

    def config_for(task: str):
        args = argparse.Namespace(
            data=str(fixture_rows(task, tmp_path)), gen_length=32, block_length=None, steps=None,
            prompt_style="chat", preset="bgpo", gpus_per_worker=0.0, rollout_workers=1,
            verifier_workers=1, seed=0, overrides=["rewards.deadline_s=20"])
        return eval_config(args, task, model, kind)

    tasks = ["gsm8k", "math", "countdown", "humaneval", "mbpp"]
    with EvalActors(config_for(tasks[0])) as actors:
        for task in tasks:
            config = config_for(task)
            # Paper defaults apart from the short length: greedy, steps = L, block 32.
            sampling = config.rollout.eval_sampling
            assert (sampling.gen_length, sampling.steps, sampling.block_length) == (32, 32, 32)
            rows = load_eval_rows(config.task, 2, 0)
            evaluate_checkpoint(config, rows, tmp_path / task, kind=kind, limit=2, actors=actors,
                                log=lambda _: None)
            check_outputs(tmp_path / task, task, 2)
    records = [json.loads(line) for line in (tmp_path / "gsm8k" / "results.jsonl").read_text().splitlines()]
    # No chat template in the tiny tokenizer: the plain message text; the bgpo preset (BGPO's own
    # prompts, as DARE trains) leaves the row's question as it is, with no boxed instruction.
    row = json.loads((FIXTURES / "gsm8k.jsonl").read_text().splitlines()[0])
    assert records[0]["prompt"] == row["prompt"][0]["content"]


def test_eval_defaults_follow_the_paper():
    from cluster.evaluate import default_settings

    assert default_settings("gsm8k", "llada")["gen_length"] == 512
    assert default_settings("humaneval", "dream")["gen_length"] == 512
    assert default_settings("sudoku", "llada") == {"prompt_style": "chat", "preset": "bgpo", "gen_length": 256,
                                                   "block_length": 32}
    assert default_settings("countdown", "tiny")["prompt_style"] == "compact"
    assert default_settings("math", "tiny")["prompt_style"] == "chat"
    assert default_settings("countdown", "tiny", "chat")["gen_length"] == 256


def test_eval_cli_argument_errors(tmp_path, capsys, tiny_checkpoint):
    from cluster.evaluate import main

    assert main(["--model", str(tiny_checkpoint), "--task", "poetry"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'poetry'" in err and "gsm8k" in err

    missing = tmp_path / "no-such-checkpoint"
    assert main(["--model", str(missing), "--task", "gsm8k"]) == 2
    assert str(missing) in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--model", str(empty), "--task", "sudoku"]) == 2
    assert "no config.json" in capsys.readouterr().err

    assert main(["--model", str(tiny_checkpoint), "--task", "gsm8k"]) == 2
    assert "task 'gsm8k' needs --data" in capsys.readouterr().err

    assert main(["--model", str(tiny_checkpoint), "--task", "sudoku", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err

    assert main(["--model", str(tiny_checkpoint), "--task", "sudoku", "rollout.bogus=1"]) == 2
    assert "rollout.bogus" in capsys.readouterr().err


def test_prompt_text_chat_template_continuation_and_plain_fallback():
    from cluster.data import prompt_text
    from dllm import build_char_tokenizer

    gsm8k = json.loads((FIXTURES / "gsm8k.jsonl").read_text().splitlines()[0])
    mbpp = json.loads((FIXTURES / "code_rows.json").read_text())["mbpp"][0]["row"]
    plain = build_char_tokenizer()  # no chat template: the messages' plain text
    assert prompt_text("gsm8k", gsm8k, "chat", plain) == gsm8k["prompt"][0]["content"]  # bgpo: as is
    text = prompt_text("gsm8k", gsm8k, "chat", plain, preset="lenient")
    assert text.startswith(gsm8k["prompt"][0]["content"]) and text.endswith("within \\boxed{}.")
    assert "[BEGIN]" in prompt_text("mbpp", mbpp, "chat", plain)

    templated = build_char_tokenizer()
    templated.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert prompt_text("gsm8k", gsm8k, "chat", templated, preset="lenient").endswith("\\boxed{}.</><assistant>")
    # MBPP rows end with a started assistant turn ("[BEGIN]\n"): it is continued, not closed.
    assert prompt_text("mbpp", mbpp, "chat", templated).endswith("<assistant>[BEGIN]\n")


def test_collect_table_labels_rows_by_folder(tmp_path):
    from cluster.eval_report import collect_table

    settings = {"gen_length": 256, "steps": 256, "block_length": 32}
    for label, acc in (("base/sudoku", 0.25), ("bgpo-sudoku/sudoku", 0.5)):
        (tmp_path / label).mkdir(parents=True)
        (tmp_path / label / "summary.json").write_text(json.dumps(
            {"task": "sudoku", "model": "m", "n": 4, "accuracy": acc, "mean_reward": acc,
             "tokens_per_s": 1.0, "settings": settings}))
    table = collect_table(tmp_path).splitlines()
    assert table[0].startswith("| run | task |") and len(table) == 4
    assert table[2].startswith("| base/sudoku | sudoku |") and "25.0%" in table[2]
