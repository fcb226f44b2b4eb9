"""VerifierWorker: order, deadlines from each item's start, fair queueing, counters, health, clear errors."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

import rewards.tasks as registry
from rewards import ScoringOptions, score
from rewards.tasks import UnknownTaskError, get_task
from rewards.verifier import VerifierWorker, sandbox_status

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


# -- fairness, per-item deadlines, queue bounds (issue 16, class 6) ----------------------------

CODE = json.loads((FIXTURES / "code_rows.json").read_text())
HE = {r["entry_point"]: r for r in CODE["humaneval"]}
COUNTDOWN_OK = "<answer>30 - (100 - 93)</answer>"  # rows("countdown")[0]: [30, 100, 93] -> 23


def he_request(completion: str, name: str = "has_close_elements") -> dict:
    return {"task": "humaneval", "completion": completion, "item": HE[name]["row"]}


def run_in_threads(worker, batches: list[list[dict]], gap_s: float = 0.0) -> tuple[list, list]:
    """score_batch each batch in its own thread, `gap_s` apart; (threads, results per batch)."""
    import threading  # noqa: PLC0415

    out: list = [None] * len(batches)

    def go(i):
        out[i] = worker.score_batch(batches[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
        time.sleep(gap_s)
    return threads, out


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


class FakeScorer:
    """Stands in for rewards.score inside the verifier: records start order and concurrency, sleeps per completion
    ("sleep:<s>"), or blocks on `gate` ("gate")."""

    def __init__(self):
        import threading  # noqa: PLC0415

        self.lock, self.gate = threading.Lock(), threading.Event()
        self.order, self.running, self.max_running = [], 0, 0

    def __call__(self, task, label, item, *, preset, options):
        with self.lock:
            self.order.append(label)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            kind, _, arg = label.partition(":")
            if kind == "gate":
                self.gate.wait(10)
            elif kind == "sleep":
                time.sleep(float(arg))
            elif kind == "iso_wait":  # waits for an isolation child, then works
                from rewards.isolation import _waiting  # noqa: PLC0415

                wait_s, work_s = map(float, arg.split(","))
                with _waiting():
                    time.sleep(wait_s)
                time.sleep(work_s)
            return score("countdown", COUNTDOWN_OK, rows("countdown")[0])
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def fake_worker(monkeypatch):
    def make(max_concurrency=1, **kwargs) -> tuple[VerifierWorker, FakeScorer]:
        fake = FakeScorer()
        monkeypatch.setattr("rewards.verifier.score", fake)
        return VerifierWorker("fair", max_concurrency=max_concurrency, **kwargs), fake

    return make


def batch(*labels: str) -> list[dict]:
    return [{"task": "countdown", "completion": label, "item": {}} for label in labels]


def test_items_start_round_robin_across_batches(fake_worker):
    w, fake = fake_worker(1)
    threads, out = run_in_threads(w, [batch("gate", "a1", "a2", "a3")])
    wait_for(lambda: fake.order == ["gate"])  # a0 holds the only slot
    more, out_bc = run_in_threads(w, [batch("b0", "b1"), batch("c0", "c1")], gap_s=0.2)
    wait_for(lambda: w.counters()["scheduler"]["queued"] == 7)
    fake.gate.set()
    for t in threads + more:
        t.join(10)
    # FIFO would give a1 a2 a3 b0 b1 c0 c1: every later batch behind the whole first one.
    assert fake.order == ["gate", "a1", "b0", "c0", "a2", "b1", "c1", "a3"]
    results = [r for rs in out + out_bc for r in rs]
    assert all(r.status == "ok" for r in results)
    labels = ["gate", "a1", "a2", "a3", "b0", "b1", "c0", "c1"]
    queue_s = {label: r.extra["queue_s"] for label, r in zip(labels, results, strict=True)}
    assert queue_s["gate"] < 0.3 < queue_s["a3"]  # the gate held the others for 0.4 s+
    counters = w.counters()
    assert counters["queue_s_max"] >= queue_s["a3"] > 0
    assert counters["queue_s_sum"]["countdown"] == pytest.approx(sum(queue_s.values()), abs=1e-3)
    assert counters["scheduler"]["started"] == 8 and counters["scheduler"]["queued"] == 0
    w.close()


def test_concurrency_stays_at_max_concurrency(fake_worker):
    w, fake = fake_worker(2)
    threads, out = run_in_threads(w, [batch(*["sleep:0.05"] * 6) for _ in range(3)])
    for t in threads:
        t.join(10)
    assert fake.max_running == 2 and len(fake.order) == 18
    assert all(r.status == "ok" for rs in out for r in rs)
    w.close()


def test_queue_wait_bound_gives_a_clear_status_not_a_hang(fake_worker):
    w, fake = fake_worker(1, max_queue_s=0.5)
    threads, out = run_in_threads(w, [batch("sleep:2")])
    wait_for(lambda: fake.order == ["sleep:2"])
    start = time.monotonic()
    late = w.score_batch(batch("never", "never"))
    assert time.monotonic() - start < 1.9  # gave up at 0.5 s, before the slot came free
    for r in late:
        assert (r.score, r.status, r.extra["unscored"]) == (0.0, "error", "queue"), r
        assert re.fullmatch(r"queued for 0\.\d+s behind \d items \(1 running\); never started",
                            r.detail), r.detail
        assert r.extra["queue_s"] >= 0.5
    threads[0].join(10)
    assert out[0][0].status == "ok" and "never" not in fake.order  # expired items never run
    assert w.counters()["scheduler"]["queue_expired"] == 2
    w.close()


def test_deadline_counts_from_the_item_start_and_overruns_free_their_slot(fake_worker):
    # budget 0.8 s: an item that overruns is reported at ~0.8 s after ITS start; the ones queued
    # behind it (0.5 s each) each get a full budget of their own and all score.
    w, fake = fake_worker(1, options=ScoringOptions(deadline_s=0.5), grace_s=0.3)
    results = w.score_batch(batch("sleep:6", "sleep:0.5", "sleep:0.5", "sleep:0.5"))
    assert [r.status for r in results] == ["timeout", "ok", "ok", "ok"], results
    assert results[0].detail == "no result within 0.8s of its start"
    assert 0.8 <= results[0].seconds < 2.5 and results[3].extra["queue_s"] > 1.5
    assert w.counters()["scheduler"]["abandoned"] == 1  # the overrunning thread, still asleep
    w.close()


def test_isolation_waits_are_not_charged_to_the_deadline(fake_worker):
    w, _ = fake_worker(1, options=ScoringOptions(deadline_s=0.5), grace_s=0.3)
    (result,) = w.score_batch(batch("iso_wait:1.2,0.4"))  # 1.6 s in all, 0.4 s of it work
    assert result.status == "ok", result
    assert result.extra["isolation_wait_s"] >= 1.2
    assert w.counters()["isolation_wait_s_sum"] >= 1.2
    w.close()


def test_cancelled_and_closed_batches_drop_their_queued_items(fake_worker):
    import threading  # noqa: PLC0415

    w, fake = fake_worker(1)
    threads, _ = run_in_threads(w, [batch("gate")])
    wait_for(lambda: fake.order == ["gate"])
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    given_up = w.score_batch(batch("x", "x"), cancel=cancel)
    assert {(r.status, r.extra["unscored"]) for r in given_up} == {("error", "cancelled")}
    closing, out = run_in_threads(w, [batch("y")])
    wait_for(lambda: w.counters()["scheduler"]["queued"] == 1)
    w.close()
    closing[0].join(5)
    assert out[0][0].extra["unscored"] == "closed"
    fake.gate.set()
    threads[0].join(5)
    assert fake.order == ["gate"]  # nothing queued ran after its caller left or the close
    with pytest.raises(RuntimeError, match="closed"):
        w.score_batch(batch("z"))


def test_pool_reports_waits_for_a_child_and_bounds_them():
    import threading  # noqa: PLC0415

    from rewards.isolation import IsolationPool, report_waits  # noqa: PLC0415

    class Clock:
        began = ended = 0

        def wait_began(self):
            self.began += 1
            self.t0 = time.monotonic()

        def wait_ended(self):
            self.ended += 1
            self.waited = time.monotonic() - self.t0

    pool = IsolationPool(1)
    try:
        assert pool.call("rewards.mathcheck:verify", "1", "1", deadline_s=30).value is True
        holder = threading.Thread(target=pool.call, args=("rewards.mathcheck:verify", "3",
                                                          "9^{9^{9^{9}}}"), kwargs={"deadline_s": 2.0})
        holder.start()
        wait_for(lambda: pool.health()["idle"] == 0)
        busy = pool.call("rewards.mathcheck:verify", "1", "1", deadline_s=5, queue_wait_s=0.3)
        assert (busy.status, busy.detail) == ("error", "no isolation child free within 0.3s")
        clock = Clock()
        with report_waits(clock):
            late = pool.call("rewards.mathcheck:verify", "1", "1", deadline_s=1.0,
                             queue_wait_s=30)
        holder.join(10)
        # Waited for the stalled call's kill and the replacement's start-up, then ran within
        # its own 1 s deadline: the wait was reported, not charged.
        assert late.status == "ok" and late.value is True and late.seconds < 1.0
        assert clock.began == clock.ended == 1 and clock.waited > 1.0
    finally:
        pool.close()


@pytest.mark.skipif(not sandbox_status()["available"],
                    reason="no code sandbox here")
def test_slow_batches_of_others_do_not_zero_a_correct_answer():
    """The issue's scenario: four concurrent batches of code that sleeps to its deadline, then
    two more requests with correct answers (HumanEval, Countdown). Before: FIFO behind 12 items
    of 2 s, a deadline counted from the batch's start, 0.0 "no result within 7s". Now: they
    start after one round of the batches ahead and score 1.0."""
    w = VerifierWorker("fair-code", max_concurrency=2, options=ScoringOptions(deadline_s=2.0))
    sleeper = he_request("```python\ndef has_close_elements(numbers, threshold):\n"
                         "    import time\n    time.sleep(60)\n```")
    slow, slow_out = run_in_threads(w, [[sleeper] * 3 for _ in range(4)], gap_s=0.05)
    wait_for(lambda: sum(w.counters()["scheduler"][k] for k in ("queued", "started")) == 12)
    rec = HE["has_close_elements"]
    from rewards.tasks.humaneval import prompt_code  # noqa: PLC0415

    fresh, fresh_out = run_in_threads(w, [
        [he_request(f"```python\n{prompt_code(rec['row'])}{rec['solution_body']}```")],
        [{"task": "countdown", "completion": COUNTDOWN_OK, "item": rows("countdown")[0]}],
    ], gap_s=0.05)
    for t in fresh:
        t.join(30)
    (he,), (cd,) = fresh_out
    assert (he.score, he.status) == (1.0, "ok"), he
    assert (cd.score, cd.status) == (1.0, "ok"), cd
    assert he.extra["queue_s"] > 1.0  # it did wait behind the sleepers, and was still scored
    assert w.counters()["scheduler"]["queued"] > 0  # ... before the slow batches were done
    w.close()  # the rest of the sleepers: dropped, not run
    for t in slow:
        t.join(30)
    statuses = [r.status for rs in slow_out for r in rs]
    assert statuses.count("timeout") >= 4 and set(statuses) <= {"timeout", "error"}
    assert all(r.extra.get("unscored") == "closed" for rs in slow_out for r in rs
               if r.status == "error")


def test_service_metrics_carry_the_queue_time():
    from fastapi.testclient import TestClient  # noqa: PLC0415

    from rewards.service import create_app  # noqa: PLC0415

    client = TestClient(create_app("t0ken"))
    auth = {"Authorization": "Bearer t0ken"}
    body = {"requests": [{"task": "countdown", "completion": COUNTDOWN_OK,
                          "item": rows("countdown")[0]}]}
    (result,) = client.post("/v1/score", json=body, headers=auth).json()["results"]
    assert result["status"] == "ok" and result["extra"]["queue_s"] >= 0.0
    text = client.get("/metrics", headers=auth).text
    assert 'bgpo_reward_queue_seconds_count{task="countdown"} 1.0' in text


def test_a_wedged_scheduler_expires_its_queue_instead_of_hanging():
    """Items that never return: the first overrun hands its slot to a fresh thread, the second
    (one abandoned thread per slot already) keeps it; the item queued behind them then expires
    by the stall rule (no start for stall_s), with no max_queue_s set."""
    import threading  # noqa: PLC0415

    from rewards.scheduler import FairScheduler  # noqa: PLC0415

    gate = threading.Event()
    sched = FairScheduler(1, budget_s=0.3, stall_s=0.9, name="wedged")
    start = time.monotonic()
    outcomes = sched.run([lambda c: gate.wait(20), lambda c: gate.wait(20), lambda c: "quick"])
    elapsed = time.monotonic() - start
    gate.set()
    assert [o.kind for o in outcomes] == ["timeout", "timeout", "queue_expired"], outcomes
    assert outcomes[2].detail.startswith("queued for ") and outcomes[2].queue_s >= 0.9
    assert elapsed < 5.0  # ~1.2 s: the stall limit, not the 20 s the items would hang
    assert sched.snapshot()["timeouts"] == 2
    sched.close()
