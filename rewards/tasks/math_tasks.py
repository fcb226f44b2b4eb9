"""GSM8K and MATH (MATH train, MATH500): boxed-answer math tasks.

Presets:
- `bgpo` (default): the LAST brace-matched `\\boxed{...}`; none -> 0 (no_answer). Correct (1.0)
  if it equals the gold answer as a normalised string, as an exact number, or by math-verify
  (gold first). Binary, no format reward.
- `d1`: d1's sum of terms, max 4.0. GSM8K: 2.0 if the last `<answer>` block equals the gold
  string, 0.5 if it is all digits, plus strict/soft/xml format (0.5 each). MATH: 2.0 if the last
  `\\boxed{}` is equivalent to gold, 0.5 if the answer block holds a `\\boxed`, plus the same three
  format terms. See `d1_format` for the d1 bugs fixed here.

math-verify runs in an `IsolationPool` child under `options.deadline_s`; it never runs in this
process. Plain numbers and identical normalised strings are decided here without a child.
"""

from __future__ import annotations

from rewards.isolation import run_isolated
from rewards.tasks import d1_format
from rewards.tasks.answers import as_number, last_boxed, normalise
from rewards.tasks.base import Task
from rewards.types import RewardResult, ScoringOptions

# LLaDA's evaluation instruction; the d1/BGPO parquet rows of GSM8K and MATH are bare questions,
# and the bgpo preset only reads a `\boxed{}` answer.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# The d1 preset scores d1's XML layout (d1_format.py): the prompt asks for it. GSM8K wants the bare
# number in <answer>; MATH a \boxed{} answer inside it.
D1_FORMAT_INSTRUCTION = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)

# A boxed answer longer than this is not sent to math-verify: no gold answer in GSM8K or MATH
# comes close, and parsing pathological LaTeX is where the time goes.
MAX_ANSWER_CHARS = 1000


def gold_answer(item: dict) -> str:
    """The row's gold answer (`reward_model.ground_truth`) as a string; KeyError/TypeError if absent."""
    gold = item["reward_model"]["ground_truth"]
    if isinstance(gold, (list, tuple)):
        gold = gold[0]
    if not isinstance(gold, (str, int, float)):
        raise TypeError(f"ground_truth has type {type(gold).__name__}")
    return str(gold)


def check_equivalent(gold: str, answer: str, options: ScoringOptions) -> tuple[str, str, str]:
    """(status, method, detail) for `answer` against `gold`; status is ok, wrong, timeout or error."""
    norm_gold, norm_answer = normalise(gold), normalise(answer)
    if norm_gold == norm_answer:
        return "ok", "string", ""
    num_gold, num_answer = as_number(norm_gold), as_number(norm_answer)
    if num_gold is not None and num_answer is not None:
        return ("ok" if num_gold == num_answer else "wrong"), "number", ""
    if len(answer) > MAX_ANSWER_CHARS:
        return "wrong", "length", f"answer longer than {MAX_ANSWER_CHARS} chars"
    call = run_isolated("rewards.mathcheck:verify", gold, answer, deadline_s=options.deadline_s)
    if call.status == "ok":
        return ("ok" if call.value else "wrong"), "math_verify", ""
    return call.status, "math_verify", call.detail


class MathTask(Task):
    """MATH / MATH500: answer in the last `\\boxed{}`."""

    name = "math"
    presets = ("bgpo", "d1")
    d1_answer_rule = "Put the final answer within \\boxed{} inside <answer>."

    def format_prompt(self, item: dict, preset: str = "bgpo") -> list[dict]:
        """The row's messages with the preset's answer instruction appended to the last user
        message: BOXED_INSTRUCTION (bgpo) or d1's XML layout (d1). Rows that carry their own
        instruction (a message mentions "boxed", or "<answer>" for d1) stay as they are."""
        messages = [dict(m) for m in item["prompt"]]
        if preset == "d1":
            marker, instruction = "<answer>", f"{D1_FORMAT_INSTRUCTION}\n{self.d1_answer_rule}"
        else:
            marker, instruction = "boxed", BOXED_INSTRUCTION
        if any(marker in str(m.get("content", "")) for m in messages):
            return messages
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            raise ValueError("math row has no user message to attach the answer instruction to")
        last = messages[users[-1]]
        last["content"] = f"{str(last['content']).rstrip()}\n{instruction}"
        return messages

    def score(self, completion: str, item: dict, *, preset: str, options: ScoringOptions) -> RewardResult:
        try:
            gold = gold_answer(item)
        except (KeyError, TypeError, IndexError) as exc:
            return RewardResult(0.0, "error", f"malformed item: {type(exc).__name__}: {exc}")
        if preset == "d1":
            return self._score_d1(completion, gold, options)
        answer = last_boxed(completion)
        if answer is None:
            return RewardResult(0.0, "no_answer", "no closed \\boxed{} found")
        status, method, detail = check_equivalent(gold, answer, options)
        extra = {"answer": answer[:200], "method": method}
        return RewardResult(1.0 if status == "ok" else 0.0, status, detail, extra=extra)

    def _score_d1(self, completion: str, gold: str, options: ScoringOptions) -> RewardResult:
        terms = d1_format.format_terms(completion)
        terms["boxed_in_answer"] = d1_format.boxed_in_answer(completion)
        answer = last_boxed(completion)
        status, method, detail = "no_answer", "", "no closed \\boxed{} found"
        if answer is not None:
            status, method, detail = check_equivalent(gold, answer, options)
        terms["correctness"] = 2.0 if status == "ok" else 0.0
        extra = {"answer": (answer or "")[:200], "method": method, "terms": terms}
        return RewardResult(sum(terms.values()), status, detail, extra=extra)


class GSM8KTask(MathTask):
    """GSM8K: numeric gold answer; bgpo reads `\\boxed{}`, d1 reads `<answer>` tags."""

    name = "gsm8k"
    d1_answer_rule = "The answer is the final number alone."

    def _score_d1(self, completion: str, gold: str, options: ScoringOptions) -> RewardResult:
        terms = d1_format.format_terms(completion)
        answer = d1_format.d1_answer(completion)
        if answer is None:
            terms.update(correctness=0.0, integer=0.0)
            return RewardResult(sum(terms.values()), "no_answer", "no <answer> tag",
                                extra={"terms": terms})
        # d1 compares the extracted string with the gold string exactly; we keep that rule.
        correct = answer == gold.strip()
        terms["correctness"] = 2.0 if correct else 0.0
        terms["integer"] = 0.5 if answer.isdigit() else 0.0
        return RewardResult(sum(terms.values()), "ok" if correct else "wrong",
                            extra={"answer": answer[:200], "method": "exact", "terms": terms})
