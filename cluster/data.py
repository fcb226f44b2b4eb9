"""Prompts for a run: the train/test rows, how they become token ids, and the data cursor.

Rows follow the d1/BGPO layout (`prompt`, `reward_model`, `extra_info`) whether they come from a
user's file, the hub, or the procedural generators (sudoku, countdown). Two prompt styles:
- chat: the row's chat messages through the tokenizer's chat template (LLaDA, Dream);
- compact: the bare puzzle for the tiny character-level model, e.g. "3102200002100320=" for
  Sudoku, with the answer itself as the completion (reward preset `compact`); the formats belong
  to the task modules (`rewards.tasks.*.compact_prompt`).
The cursor (epoch, position) walks a seeded permutation per epoch, so a resumed run sees the
same order as an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dllm.padding import left_pad
from rewards.datasets import load_rows


def compact_prompt(task: str, row: dict) -> str:
    """The tiny model's bare prompt for a row (the task module's compact form)."""
    from rewards import get_task

    return get_task(task).compact_prompt(row)


def compact_target(task: str, row: dict) -> str:
    """The completion a supervised warm start learns (a certified solution)."""
    from rewards import get_task

    return get_task(task).compact_target(row)


def prompt_text(task: str, row: dict, style: str, tokenizer, preset: str = "bgpo") -> str:
    """The text the policy is prompted with.

    compact: `compact_prompt`. chat: the chat messages of the reward `preset`
    (`rewards.tasks.prompts.prompt_for`: BGPO's and d1's own prompts for `bgpo`/`d1`; `lenient`
    appends LLaDA's boxed instruction to bare GSM8K/MATH questions) through the tokenizer's chat template (a final assistant message is continued, not closed). A tokenizer
    without a chat template (the tiny model's character tokenizer) gets the plain text of the
    messages instead: their contents joined by blank lines, without role markers or a generation
    prompt.
    """
    if style == "compact":
        return compact_prompt(task, row)
    from rewards import get_task

    messages = get_task(task).format_prompt(row, preset)
    if getattr(tokenizer, "chat_template", None) is None:
        return "\n\n".join(str(m["content"]) for m in messages)
    if messages and messages[-1].get("role") == "assistant":
        # A started answer (MBPP's few-shot rows end with "[BEGIN]\n"): the model continues it.
        return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(texts: list[str], tokenizer) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def sft_examples(task: str, rows: list[dict], tokenizer, gen_length: int, eos_id: int, pad_id: int):
    """(input_ids, attention_mask) of prompt + target padded with EOS to gen_length (LLaDA's SFT)."""
    seqs = []
    for row in rows:
        prompt = tokenizer(compact_prompt(task, row), add_special_tokens=False).input_ids
        target = tokenizer(compact_target(task, row), add_special_tokens=False).input_ids
        if len(target) > gen_length:
            raise ValueError(f"target of {len(target)} tokens exceeds gen_length {gen_length}")
        seqs.append(prompt + target + [eos_id] * (gen_length - len(target)))
    return left_pad(seqs, pad_id)


def generate_rows(task: str, n: int, split: str, seed: int) -> list[dict]:
    """Procedural rows with certified solutions; train and test come from disjoint grids/targets."""
    from rewards import generators

    if task == "sudoku":
        return generators.sudoku_rows(n, split=split, seed=seed)
    if task == "countdown":
        return generators.countdown_rows(n, split=split, seed=seed)
    raise ValueError(f"no generator for task {task!r}: give task.train_path/test_path")


def load_task_rows(task_cfg, split: str, seed: int) -> list[dict]:
    path = task_cfg.train_path if split == "train" else task_cfg.test_path
    if isinstance(path, list):
        return [row for one in path for row in load_rows(one)]
    if path:
        return load_rows(path)
    n = task_cfg.num_train if split == "train" else task_cfg.num_test
    return generate_rows(task_cfg.name, n, split, seed)


def generated_train_and_heldout(task_cfg, seed: int) -> tuple[list[dict], list[dict]]:
    """Generated training rows plus held-out rows drawn from the same training grids/number sets
    but never in the training rows (the test split uses grids/number sets training never sees)."""
    rows = generate_rows(task_cfg.name, task_cfg.num_train + 2 * task_cfg.num_test, "train", seed)
    unique = list({compact_prompt(task_cfg.name, r): r for r in rows}.values())
    train = unique[: task_cfg.num_train]
    seen = {compact_prompt(task_cfg.name, r) for r in train}
    heldout = [r for r in unique[task_cfg.num_train :] if compact_prompt(task_cfg.name, r) not in seen]
    return train, heldout[: task_cfg.num_test]


@dataclass
class DataCursor:
    epoch: int = 0
    position: int = 0


class PromptSource:
    """Hands out row indices in a seeded per-epoch order; its cursor is checkpointed."""

    def __init__(self, num_rows: int, seed: int, cursor: DataCursor | None = None) -> None:
        if num_rows <= 0:
            raise ValueError("the training set is empty")
        self.num_rows, self.seed = num_rows, seed
        self.cursor = cursor or DataCursor()
        self._order = self._permutation(self.cursor.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_rows))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.cursor.position >= self.num_rows:
                self.cursor = DataCursor(self.cursor.epoch + 1, 0)
                self._order = self._permutation(self.cursor.epoch)
            out.append(self._order[self.cursor.position])
            self.cursor.position += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.cursor.epoch, "position": self.cursor.position}
