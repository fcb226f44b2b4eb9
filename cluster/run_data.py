"""The data of one run: its train and evaluation rows, the tokenizer, and the prompts as token ids.

Built once by the controller from the config; read by the loop (train prompts), the evaluation
(eval prompts) and the warm start (supervised examples). It starts no actors and holds no state
that changes during the run (the data cursor belongs to the loop).
"""

from __future__ import annotations

from cluster.data import (
    encode_prompts,
    generated_train_and_heldout,
    load_task_rows,
    prompt_text,
    sft_examples,
)
from cluster.policy_factory import load_tokenizer


class RunData:
    def __init__(self, config, *, log=print) -> None:
        self.config = config
        tok = self.tokenizer = load_tokenizer(config)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        task = config.task
        self.eval_sets = {"test": load_task_rows(task, "test", config.seed)}
        if task.train_path is None:
            self.train_rows, heldout = generated_train_and_heldout(task, config.seed)
            self.eval_sets["heldout"] = heldout
        else:
            self.train_rows = load_task_rows(task, "train", config.seed)
        self.train_prompt_ids = self._encode(self.train_rows)
        self.eval_prompt_ids = {name: self._encode(rows) for name, rows in self.eval_sets.items()}
        log(f"[setup] task {task.name}: {len(self.train_rows)} train rows, "
            + ", ".join(f"{len(r)} {n} rows" for n, r in self.eval_sets.items()))

    def _encode(self, rows: list[dict]) -> list[list[int]]:
        task = self.config.task
        texts = [prompt_text(task.name, r, task.prompt_style, self.tokenizer, task.preset) for r in rows]
        return encode_prompts(texts, self.tokenizer)

    def warm_start_examples(self) -> tuple:
        """(input_ids, attention_mask) of the supervised warm start (the tiny model's compact task)."""
        if self.config.task.prompt_style != "compact":
            raise ValueError("the supervised warm start is for the tiny model's compact task; set warmup.steps=0")
        return sft_examples(self.config.task.name, self.train_rows, self.tokenizer,
                            self.config.rollout.sampling.gen_length, self.tokenizer.eos_token_id, self.pad_id)
