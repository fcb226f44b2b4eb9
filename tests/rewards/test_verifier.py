"""VerifierWorker: order, deadlines, counters, health, and clear errors for bad task names."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import rewards.tasks as registry
from rewards import ScoringOptions, score
from rewards.tasks import UnknownTaskError, get_task
from rewards.verifier import VerifierWorker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewards"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def worker():
    w = VerifierWorker("verifier-7", max_concurrency=2, options=ScoringOptions(deadline_s=1.5))
    yield w
    w.close()


def test_mixed_batch_in_order_with_a_hostile_item(worker):
    gsm, math, sudoku = rows("gsm8k")[0], rows("math")[5], rows("sudoku")[0]
    requests = [
        {"task": "gsm8k", "completion": f"\\boxed{{{gsm['reward_model']['ground_truth']}}}",
         "item": gsm},
        {"task": "math", "completion": "\\boxed{9**9**9**9}", "item": math},  # stalls sympy
        {"task": "math500", "completion": "\\boxed{\\sqrt{117}}", "item": math},  # alias
        {"task": "sudoku", "completion": "<answer>1234</answer>", "item": sudoku},
        {"task": "countdown", "completion": None, "item": rows("countdown")[0]},
    ]
    worker.score_batch(requests[2:3])  # warm the isolation children
    start = time.monotonic()
    results = worker.score_batch(requests)
    assert time.monotonic() - start < 1.5 + 3.0
    assert [r.status for r in results] == ["ok", "timeout", "ok", "wrong", "error"]
    counts = worker.counters()
    assert counts["by_task"]["math"]["timeout"] == 1 and counts["by_task"]["math"]["ok"] == 2
    assert counts["by_task"]["gsm8k"] == {"ok": 1} and counts["items"] == 6
    assert counts["latency_s_sum"]["math"] > 1.0


def test_bad_task_names_raise_before_scoring(worker):
    with pytest.raises(ValueError, match="request 1: unknown task 'chess'"):
        worker.score_batch([{"task": "gsm8k", "completion": "", "item": {}},
                            {"task": "chess", "completion": "", "item": {}}])
    with pytest.raises(ValueError, match="preset"):
        VerifierWorker(preset="compact").score_batch([{"task": "gsm8k", "completion": "",
                                                       "item": {}}])


def test_unavailable_task_module_is_named(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "ghost", "rewards.tasks.no_such_module:Ghost")
    with pytest.raises(UnknownTaskError, match="'ghost' is unavailable"):
        get_task("ghost")


def test_health_and_repr(worker):
    health = worker.health()
    assert health["ok"] is True and health["pool"]["size"] >= 2
    assert "available" in health["sandbox"]
    assert repr(worker) == "VerifierWorker('verifier-7', preset='bgpo', max_concurrency=2)"


HOSTILE = [
    "<answer>" * 500_000,
    "</answer>" * 500_000,
    "\x00" * 3_000_000 + "<answer>\x00</answer>",
    "<answer>" + "(" * 2_000_000 + "</answer>",
    "\\boxed{" * 400_000 + "}" * 400_000,
    "\ud800<answer>\udfff</answer>",
]


@pytest.mark.parametrize("preset", ["bgpo", "d1", "lenient"])
@pytest.mark.parametrize("task", ["gsm8k", "math", "countdown", "sudoku"])
def test_hostile_completions_every_task(task, preset):
    """Megabytes of tags, braces, NULs, surrogates: linear-time extraction, no exception."""
    row = rows(task)[0]
    for text in HOSTILE:
        start = time.monotonic()
        result = score(task, text, row, preset=preset, options=ScoringOptions(deadline_s=2.0))
        assert time.monotonic() - start < 2.0, (task, text[:20])  # ~10 ms each when idle
        assert result.status in ("wrong", "no_answer", "timeout", "error"), result
        assert 0.0 <= result.score <= (1.0 if preset == "d1" else 0.1)  # d1: format terms only
