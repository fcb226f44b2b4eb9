"""The prompt each reward preset pairs with: chat messages for a dataset row.

`prompt_for(task, row, preset)` is what the cluster turns into text with the tokenizer's chat
template (`add_generation_prompt=True`, as both references do). Rows follow the d1/BGPO parquet
layout; the templates below are the references' text, copied character for character because a
prompt is part of the reward rule (it asks for the format that rule scores).

- `bgpo`: the row's own `prompt` messages, unchanged. DARE (yjyddq/DARE at 83ae8a305a53,
  `verl/utils/dataset/rl_dataset.py`) applies the chat template to the parquet's `prompt` and adds
  nothing; its GSM8K/MATH prompts are the bare question, its Countdown/Sudoku prompts carry d1's
  instructions without d1's leading newline.
- `d1`: d1's `diffu-grpo/data_utils.py` at 837888f, rebuilt from the row's fields: GSM8K
  `SYSTEM_PROMPT + "\\n\\n" + question`; MATH the same plus d1's "You are a math expert..." line;
  Countdown and Sudoku from the numbers/target and the puzzle.
- `lenient`: the row's messages with `BOXED_INSTRUCTION` appended to GSM8K/MATH questions that
  do not mention `boxed` (LLaDA's evaluation instruction; the lenient preset reads `\\boxed{}`).
- `compact`: the row's messages (the tiny model is prompted in the cluster's compact style instead).
Code tasks (HumanEval, MBPP) use the row's messages under every preset.
"""

from __future__ import annotations

import json

# d1 data_utils.SYSTEM_PROMPT (note the leading and trailing newlines).
D1_SYSTEM_PROMPT = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"

D1_MATH_INSTRUCTION = ("You are a math expert. You will be given a question to solve. Solve it step by "
                       "step. Wrap the final answer in a \\boxed{}. \n\n")

D1_SUDOKU_SYSTEM_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""

D1_COUNTDOWN_TASK = (
    "Using only the numbers {numbers}, create an arithmetic expression that evaluates to exactly "
    "{target}. You must use all numbers from the list, and each number must be used exactly once. "
    "You may use the operations +, -, *, and / as needed. After reasoning, provide only your final "
    "expression inside <answer></answer> tags without including an equals sign or the target "
    "number. For example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: "
    "<answer>\n2*4-3\n</answer>")

# LLaDA's evaluation instruction, appended by the lenient preset to bare GSM8K/MATH questions.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

PROMPT_PRESETS = ("bgpo", "d1", "lenient", "compact")


def question(row: dict) -> str:
    """The content of the row's last user message (a bare GSM8K/MATH question in these files)."""
    users = [m for m in row["prompt"] if m.get("role") == "user"]
    if not users:
        raise ValueError("row has no user message")
    return str(users[-1]["content"])


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def _with_boxed_instruction(row: dict) -> list[dict]:
    messages = [dict(m) for m in row["prompt"]]
    if any("boxed" in str(m.get("content", "")) for m in messages):
        return messages
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError("math row has no user message to attach the answer instruction to")
    last = messages[users[-1]]
    last["content"] = f"{str(last['content']).rstrip()}\n{BOXED_INSTRUCTION}"
    return messages


def _countdown_fields(row: dict) -> tuple[list[int], int]:
    extra = row.get("extra_info") or {}
    numbers = extra["numbers"]
    numbers = json.loads(numbers) if isinstance(numbers, str) else [int(n) for n in numbers]
    target = extra.get("target", row["reward_model"]["ground_truth"])
    return numbers, int(str(target).strip())


def d1_prompt(task: str, row: dict) -> list[dict]:
    """d1's prompt for a row of `task` (gsm8k, math, countdown, sudoku)."""
    if task == "gsm8k":
        return _user(D1_SYSTEM_PROMPT + "\n\n" + question(row))
    if task == "math":
        return _user(f"{D1_SYSTEM_PROMPT}\n\n{D1_MATH_INSTRUCTION}{question(row)}")
    if task == "countdown":
        numbers, target = _countdown_fields(row)
        return _user(f"{D1_SYSTEM_PROMPT}\n" + D1_COUNTDOWN_TASK.format(numbers=numbers, target=target))
    if task == "sudoku":
        puzzle = str((row.get("extra_info") or {})["puzzle"])
        return _user(f"{D1_SUDOKU_SYSTEM_PROMPT}\n\nSolve the following Sudoku puzzle: {puzzle}\n")
    return [dict(m) for m in row["prompt"]]


def prompt_for(task: str, row: dict, preset: str) -> list[dict]:
    """Chat messages for `row` of `task` under reward `preset`; ValueError for an unknown preset."""
    if preset not in PROMPT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PROMPT_PRESETS)}")
    if preset == "d1":
        return d1_prompt(task, row)
    if preset == "lenient" and task in ("gsm8k", "math"):
        return _with_boxed_instruction(row)
    return [dict(m) for m in row["prompt"]]
