"""GSM8K and MATH (MATH train, MATH500): the three chat presets' scoring.

Presets:
- `bgpo`: BGPO's reward (DARE `math_rm`, ported in `bgpo_math`): the last `\\boxed{...}` exactly,
  graded by the Hendrycks string match or DARE's sympy grader; 1 or 0. Same rule for GSM8K.
- `d1`: d1's reward (ported in `d1_rules`, pinned to d1 837888f). GSM8K: five terms, max 4.0.
  MATH: correctness (2.0) plus 0.5 x boxed_in_answer (0.25, 0.75, or more with d1's backspace).
- `lenient`: this project's own rule, kept for its fixes: the last brace-matched `\\boxed{}`
  (an unclosed one falls back to the previous closed box), correct if equal as a normalised
  string, as an exact number (so `\\frac{2}{4}` = `\\frac12`), or by math-verify; 1 or 0.
Prompts per preset: `rewards.tasks.prompts`.

sympy and math-verify run in an `IsolationPool` child under `options.deadline_s`, never in this
process; string and number checks that decide most answers are made here without a child.
"""

from __future__ import annotations

from rewards.isolation import run_isolated
from rewards.tasks import bgpo_math, d1_rules
from rewards.tasks.answers import as_number, last_boxed, normalise
from rewards.tasks.base import Task
from rewards.types import RewardResult, ScoringOptions

# A lenient-preset answer longer than this is not sent to math-verify: no gold answer in GSM8K
# or MATH comes close, and parsing pathological LaTeX is where the time goes.
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
    """Lenient check: (status, method, detail); status is ok, wrong, timeout or error."""
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


def bgpo_check(answer: str, golds: list[str], options: ScoringOptions) -> tuple[str, str, str]:
    """BGPO's check of an extracted answer against each gold answer: (status, method, detail)."""
    status, method, detail = "wrong", "mathd", ""
    for gold in golds:
        if bgpo_math.mathd_equal(answer, gold):
            return "ok", "mathd", ""
        if len(answer) > bgpo_math.MAX_SYMPY_CHARS:
            status, method, detail = "wrong", "length", f"answer longer than {bgpo_math.MAX_SYMPY_CHARS} chars"
            continue
        call = run_isolated("rewards.sympycheck:sympy_equal", answer, gold,
                            deadline_s=options.deadline_s)
        if call.status == "ok" and call.value:
            return "ok", "sympy", ""
        if call.status != "ok":
            status, method, detail = call.status, "sympy", call.detail
        else:
            status, method, detail = "wrong", "sympy", ""
    return status, method, detail


class MathTask(Task):
    """MATH / MATH500."""

    name = "math"
    presets = ("bgpo", "d1", "lenient")

    def score(self, completion: str, item: dict, *, preset: str, options: ScoringOptions) -> RewardResult:
        try:
            gold = gold_answer(item)
        except (KeyError, TypeError, IndexError) as exc:
            return RewardResult(0.0, "error", f"malformed item: {type(exc).__name__}: {exc}")
        if preset == "bgpo":
            return self._score_bgpo(completion, item["reward_model"]["ground_truth"], options)
        if preset == "d1":
            return self._score_d1(completion, gold)
        return self._score_lenient(completion, gold, options)

    @staticmethod
    def _score_bgpo(completion: str, label, options: ScoringOptions) -> RewardResult:
        answer = bgpo_math.extract_answer(completion)
        if answer is None:
            return RewardResult(0.0, "no_answer", "no complete \\boxed{...} as the last \\boxed")
        golds = bgpo_math.gold_answers(label)
        if not golds:
            return RewardResult(0.0, "wrong", "no usable gold answer", extra={"answer": answer[:200]})
        status, method, detail = bgpo_check(answer, golds, options)
        return RewardResult(1.0 if status == "ok" else 0.0, status, detail,
                            extra={"answer": answer[:200], "method": method})

    @staticmethod
    def _score_d1(completion: str, gold: str) -> RewardResult:
        terms = d1_rules.math_terms(completion, gold)
        answer = d1_rules.math_answer(completion)
        status = "ok" if terms["correctness"] else "wrong"
        return RewardResult(sum(terms.values()), status,
                            extra={"answer": answer[:200], "method": "d1_is_equiv", "terms": terms})

    @staticmethod
    def _score_lenient(completion: str, gold: str, options: ScoringOptions) -> RewardResult:
        answer = last_boxed(completion)
        if answer is None:
            return RewardResult(0.0, "no_answer", "no closed \\boxed{} found")
        status, method, detail = check_equivalent(gold, answer, options)
        return RewardResult(1.0 if status == "ok" else 0.0, status, detail,
                            extra={"answer": answer[:200], "method": method})


class GSM8KTask(MathTask):
    """GSM8K: bgpo and lenient read `\\boxed{}` as for MATH; d1 reads `<answer>` tags."""

    name = "gsm8k"

    @staticmethod
    def _score_d1(completion: str, gold: str) -> RewardResult:
        terms = d1_rules.gsm8k_terms(completion, gold)
        total = sum(terms.values())
        answer = d1_rules.xml_answer(completion)
        status = "ok" if terms["correctness"] else ("wrong" if answer else "no_answer")
        return RewardResult(total, status,
                            extra={"answer": answer[:200], "method": "exact", "terms": terms})
