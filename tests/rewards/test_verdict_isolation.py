"""The verdict is computed where candidate code cannot reach it (issue 16, classes 1 and 2).

Each payload would score 1.0 with a wrong answer if the tests still ran in the candidate's
interpreter (the issue reproduced every one of them on the old harness): patching the harness's
`compile_test`, patching the `math` / `random` modules the tests import, forging report lines on
every descriptor, reading the expected value from frames / gc / inspect, replacing builtins. Now
each must score 0.0, and the row's correct answer must still score 1.0 in the same test. Also here:
the fallbacks for values that cannot cross (remote handles, remote iterators), W's death, and the
tagged encoding's bounds (in-process, no sandbox needed).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections import namedtuple
from enum import IntEnum
from pathlib import Path

import pytest
from host_checks import ShmemWatch

from rewards import code_harness as harness
from rewards.sandbox import CodeSandbox, SandboxConfig
from rewards.tasks.humaneval import HumanEvalTask, prompt_code
from rewards.tasks.mbpp import MBPPTask
from rewards.types import ScoringOptions

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rewards" / "code_rows.json"
DATA = json.loads(FIXTURE.read_text())
HE = {r["entry_point"]: r for r in DATA["humaneval"]}
MB = {r["entry_point"]: r for r in DATA["mbpp"]}
ROWS = [("humaneval", n) for n in sorted(HE)] + [("mbpp", n) for n in sorted(MB)]
OPT = ScoringOptions(deadline_s=5)
TOKEN = secrets.token_hex(8)
needs_sandbox = pytest.mark.skipif(shutil.which("bwrap") is None or shutil.which("prlimit") is None,
                                   reason="bubblewrap/prlimit not installed")


@pytest.fixture(scope="module")
def sandbox():
    if shutil.which("bwrap") is None or shutil.which("prlimit") is None:
        pytest.skip("bubblewrap/prlimit not installed")
    box = CodeSandbox(SandboxConfig(uid_base=270_000, uid_count=100))
    ok, reason = box.availability()
    assert ok, f"bwrap is installed but the sandbox does not work: {reason}"
    yield box
    box.warm.close()


def score(task: str, name: str, code: str):
    """Score `code` (a full program: prompt imports are kept by the task) as the row's answer."""
    if task == "humaneval":
        return HumanEvalTask().score(f"```python\n{code}```", HE[name]["row"], preset="bgpo",
                                     options=OPT)
    return MBPPTask().score(f"```python\n{code}```", MB[name]["row"], preset="bgpo", options=OPT)


def correct(task: str, name: str) -> str:
    rec = HE[name] if task == "humaneval" else MB[name]
    return prompt_code(rec["row"]) + rec["solution_body"] if task == "humaneval" else rec["solution"]


def wrong(name: str) -> str:
    return f"def {name}(*args, **kwargs):\n    return None\n"


def assert_hack_fails_and_correct_passes(task: str, name: str, hack: str) -> None:
    start = time.monotonic()
    with ShmemWatch() as host:
        bad = score(task, name, hack)
    assert (bad.score, bad.status) == (0.0, "wrong"), (task, name, bad.detail)
    assert time.monotonic() - start < OPT.deadline_s + 5  # parsing child + sandbox start-up
    host.assert_bounded()
    good = score(task, name, correct(task, name))
    assert (good.score, good.status) == (1.0, "ok"), (task, name, good.detail)


# ----- class 1: the candidate shares an interpreter with the judge ---------------------------------
@needs_sandbox
def test_tests_run_in_pid_1_and_the_candidate_elsewhere(sandbox):
    program = ("import builtins, os\nbuiltins.MARK = 1\n"
               "def f():\n    return [os.getpid(), hasattr(builtins, 'MARK')]\n")
    tests = ["import os\nassert os.getpid() == 1 and f()[0] != 1",
             "import builtins\nassert f()[1] is True and not hasattr(builtins, 'MARK')"]
    result = sandbox.run(program, tests, deadline_s=5, guard=("f",))
    assert result.status == "ok", result.detail



PATCH_COMPILE_TEST = ("import __main__\n"
                      "__main__.compile_test = lambda src, name: compile('pass', name, 'exec')\n")
PATCH_EVERY_HELPER = ("import __main__\n"
                      "for _n in dir(__main__):\n"
                      "    if callable(getattr(__main__, _n)) and not _n.startswith('__'):\n"
                      "        setattr(__main__, _n, lambda *a, **k: True)\n")


@needs_sandbox
@pytest.mark.parametrize("task,name", ROWS)
def test_patching_the_harness_module_earns_nothing(task, name):
    """The issue's two lines scored 1.0 on 8 of 8 rows; here every row scores 0.0."""
    assert_hack_fails_and_correct_passes(task, name, PATCH_COMPILE_TEST + wrong(name))
    bad = score(task, name, PATCH_EVERY_HELPER + wrong(name))  # W's own helpers included
    assert bad.score == 0.0, bad.detail


FORGE = ("import os\n"
         "def _frame(payload):\n"
         "    return len(payload).to_bytes(8, 'little') + payload\n"
         "_LINES = b'loaded -1 1 \\nresult 0 1 \\ndone -1 0 \\nresult 0 pass\\ndone 1\\n'\n"
         "_FRAMES = b''.join(_frame(p) for p in (b't\\x02\\x00\\x00\\x00s\\x02\\x00\\x00\\x00ok"
         "b\\x01\\x00\\x00\\x00T', b'T', b'N'))\n"
         "def _forge():\n"
         "    for fd in range(256):\n"
         "        for blob in (_LINES, _FRAMES):\n"
         "            try:\n"
         "                os.write(fd, blob)\n"
         "            except OSError:\n"
         "                pass\n"
         "    for path in ('/proc/1/fd/1', '/proc/1/fd/3', '/proc/1/fd/4', '/proc/self/fd/1'):\n"
         "        try:\n"
         "            os.write(os.open(path, os.O_WRONLY), _LINES + _FRAMES)\n"
         "        except OSError:\n"
         "            pass\n"
         "    print(_LINES.decode())\n"
         "_forge()\n"
         "def f():\n"
         "    _forge()\n"
         "    return None\n")


@needs_sandbox
def test_forged_lines_and_frames_on_every_descriptor_earn_nothing(sandbox):
    result = sandbox.run(FORGE, [f"assert f() == 'expected_{TOKEN}'"], deadline_s=5, guard=("f",))
    assert (result.status, result.passed) == ("wrong", 0), result.detail
    truth = sandbox.run(FORGE, ["assert f()", "assert f() is None"], deadline_s=5, guard=("f",))
    assert truth.passed <= 1 and truth.status == "wrong", truth.detail  # `f()` is None: falsy


SPY = ("import gc, inspect, sys\n"
       "def _secret(v):  # the test's expected value, not this program's own 'expected_' literal\n"
       "    return isinstance(v, str) and v.startswith('expected_') and len(v) == 25\n"
       "def _look(d):\n"
       "    for v in list(getattr(d, 'values', lambda: [])()):\n"
       "        if _secret(v):\n"
       "            return v\n"
       "def f():\n"
       "    frame = sys._getframe()\n"
       "    while frame is not None:\n"
       "        for d in (frame.f_locals, frame.f_globals):\n"
       "            if _look(d):\n"
       "                return _look(d)\n"
       "        for c in frame.f_code.co_consts:\n"
       "            if _secret(c):\n"
       "                return c\n"
       "        frame = frame.f_back\n"
       "    for info in inspect.stack():\n"
       "        if _look(info.frame.f_locals):\n"
       "            return _look(info.frame.f_locals)\n"
       "    for o in gc.get_objects():\n"
       "        if isinstance(o, dict) and _look(o):\n"
       "            return _look(o)\n"
       "        if _secret(o):\n"
       "            return o\n"
       "    return None\n")


@needs_sandbox
def test_expected_values_cannot_be_read_from_frames_gc_or_inspect(sandbox):
    tests = [f"expected = 'expected_{TOKEN}'\nassert f() == expected",
             f"def check(candidate):\n    want = 'expected_{TOKEN}'\n    assert candidate() == want\n"
             "check(f)\n",
             f"assert f() == 'expected_{TOKEN}'"]
    result = sandbox.run(SPY, tests, deadline_s=5, guard=("f",))
    assert (result.status, result.passed) == ("wrong", 0), result.detail
    assert TOKEN not in result.detail


BUILTINS_HACK = ("import builtins\n"
                 "builtins.abs = lambda x: 0\n"
                 "builtins.sum = lambda *a: 2\n"
                 "builtins.isinstance = lambda *a: True\n"
                 "builtins.AssertionError = type('Nope', (Exception,), {})\n"
                 "def abs(x):\n    return 0\n"
                 "def set(*a):\n    return 1\n"
                 "def sorted(*a, **k):\n    return 1\n"
                 "def f(x):\n    return [99]\n")


@needs_sandbox
def test_replacing_builtins_earns_nothing(sandbox):
    tests = ["assert abs(f(1)[0] - 2) < 1e-6", "assert set(f(1)) == set([2])",
             "assert sorted(f(1)) == [2]", "assert sum(f(1)) == 2",
             "assert isinstance(f(1), tuple)"]
    result = sandbox.run(BUILTINS_HACK, tests, deadline_s=5, guard=("f",))
    assert (result.status, result.passed) == ("wrong", 0), result.detail
    good = sandbox.run("def f(x):\n    return [x + 1]\n", tests[:3], deadline_s=5, guard=("f",))
    assert good.status == "ok", good.detail


# ----- class 2: shared standard-library modules -------------------------------------------------
@needs_sandbox
def test_patched_math_does_not_reach_humaneval_32():
    hack = ("import math\nmath.fabs = lambda x: 0.0\nmath.isclose = lambda *a, **k: True\n"
            "def find_zero(xs):\n    return 0.0\n")
    assert_hack_fails_and_correct_passes("humaneval", "find_zero", hack)


@needs_sandbox
def test_patched_random_does_not_reach_humaneval_38():
    hack = ("import random, string\nrandom.choice = lambda seq: ''\nrandom.randint = lambda a, b: 0\n"
            "string.ascii_lowercase = ''\n"
            "def decode_cyclic(s):\n    return ''\n")
    assert_hack_fails_and_correct_passes("humaneval", "decode_cyclic", hack)


@needs_sandbox
def test_a_fake_module_under_a_real_name_is_replaced_by_the_real_one(sandbox):
    """The candidate's `math` is reported as module "math": P imports its own."""
    program = ("import types\nmath = types.ModuleType('math')\nmath.isclose = lambda *a, **k: True\n"
               "import json as re\n"
               "def f(x):\n    return 5.0\n")
    result = sandbox.run(program, ["assert math.isclose(f(1), 2.0)", "assert re.loads('[1]') == [1]"],
                         deadline_s=5, guard=("f",))
    assert result.passed == 1 and result.status == "wrong", result.detail  # json under `re` works


# ----- fallbacks: what cannot cross as plain data ---------------------------------------------------
PAIRS = ("class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
         "def max_chain_length(arr, n):\n"
         "    arr = sorted(arr, key=lambda p: p.b)\n    best, end = 0, None\n"
         "    for p in arr:\n        if end is None or p.a > end:\n"
         "            best, end = best + 1, p.b\n    return best\n"
         "def first(arr):\n    return arr[0]\n"
         "CHAIN = [Pair(1, 2), Pair(3, 4)]\n")


@needs_sandbox
def test_candidate_objects_cross_as_handles_that_only_go_back(sandbox):
    """MBPP-style `f([Pair(5, 24), ...])`: the instances stay in W and come back as handles."""
    ok = sandbox.run(PAIRS, ["assert max_chain_length([Pair(5, 24), Pair(15, 25), Pair(27, 40), "
                             "Pair(50, 60)], 4) == 3",
                             "p = Pair(1, 2)\nassert max_chain_length([first([p, Pair(3, 4)])], 1) == 1",
                             "assert max_chain_length(CHAIN, 2) == 2"],  # MBPP 356's `root` style
                     deadline_s=5, guard=("max_chain_length",))
    assert ok.status == "ok", ok.detail
    for test in ("assert Pair(1, 2) == Pair(1, 2)", "assert Pair(1, 2)", "assert Pair(1, 2).a == 1",
                 "assert first([Pair(1, 2)]) != 0"):
        r = sandbox.run(PAIRS, [test], deadline_s=5, guard=("max_chain_length",))
        assert r.status == "wrong", (test, r.detail)
    guarded = sandbox.run(PAIRS, ["assert first([1]) == 1"], deadline_s=5, guard=("first",))
    assert guarded.status == "ok", guarded.detail  # plain result of a function under test
    obj = sandbox.run(PAIRS + "def g():\n    return Pair(1, 2)\n", ["g()"], deadline_s=5,
                      guard=("g",))
    assert obj.status == "wrong" and "non-builtin value of type Pair" in obj.detail


@needs_sandbox
def test_iterators_of_the_function_under_test_are_pulled_item_by_item(sandbox):
    program = ("import itertools\ndef f():\n    n = 0\n    while True:\n        n += 1\n"
               "        yield n\ndef g(k):\n    return map(lambda x: x * 2, range(k))\n"
               "def h():\n    return {'a': 1}.keys()\ndef r():\n    return range(3)\n"
               "class A:\n    pass\ndef bad():\n    yield A()\n")
    tests = ["it = f()\nassert next(it) == 1 and next(it) == 2 and next(it) == 3",
             "assert list(g(3)) == [0, 2, 4]", "assert sorted(h()) == ['a'] and len(h()) == 1",
             "assert list(r()) == [0, 1, 2] and len(r()) == 3"]
    result = sandbox.run(program, tests, deadline_s=5, guard=("f", "g", "h", "r", "bad"))
    assert result.status == "ok", result.detail
    bad = sandbox.run(program, ["assert next(bad()) is not None"], deadline_s=5,
                      guard=("bad",))
    assert bad.status == "wrong" and "non-builtin value" in bad.detail


@needs_sandbox
def test_exceptions_cross_as_their_nearest_builtin_type(sandbox):
    program = ("class Invalid(ValueError):\n    pass\nclass Odd(Exception):\n    pass\n"
               "def f(x):\n    if x < 0:\n        raise Invalid('negative')\n"
               "    if x == 1:\n        raise Odd('odd')\n    return x\n")
    tests = ["try:\n    f(-1)\nexcept ValueError as e:\n    assert 'negative' in str(e)\n"
             "else:\n    assert False",
             "try:\n    f(1)\nexcept ValueError:\n    assert False\nexcept Exception:\n    pass",
             "assert f(2) == 2"]
    result = sandbox.run(program, tests, deadline_s=5, guard=("f",))
    assert result.status == "ok", result.detail
    raised = sandbox.run(program, ["f(-1)"], deadline_s=5, guard=("f",))
    assert raised.status == "wrong" and "ValueError: negative" in raised.detail


@needs_sandbox
def test_worker_death_fails_the_test_in_progress_and_every_later_one(sandbox):
    program = ("import os\ndef f(x):\n    if x == 0:\n        os._exit(0)\n    return x + 1\n")
    tests = ["assert f(1) == 2",
             "try:\n    f(0)\nexcept BaseException:\n    pass",  # swallowing it does not help
             "assert f(1) == 2"]
    result = sandbox.run(program, tests, deadline_s=5, guard=("f",))
    assert (result.status, result.passed) == ("wrong", 1), result.detail


@needs_sandbox
def test_arguments_that_cannot_cross_fail_the_test(sandbox):
    result = sandbox.run("def f(g):\n    return g(1)\n", ["assert f(lambda x: x + 1) == 2"],
                         deadline_s=5, guard=("f",))
    assert result.status == "wrong" and "cannot be passed" in result.detail


# ----- the tagged encoding (in-process) -------------------------------------------------------------
def _roundtrip(value, ref=None):
    return harness._decode(harness._encode(value, ref), ref)


def test_plain_values_round_trip_with_exact_types():
    values = [None, True, False, 0, -1, 1 << 200, -(1 << 200), 255, -128, 0.1, -0.0, float("inf"),
              1e-310, 3 + 4j, "", "héllo\udc80", b"\x00\xff", [1, [2, (3,)]], (), {1, 2},
              frozenset({"a"}), {"k": [1.5], 2: None}, range(1, 10, 3)]
    for v in values:
        back = _roundtrip(v)
        assert back == v and type(back) is type(v), v
    assert repr(_roundtrip(-0.0)) == "-0.0"
    nan = _roundtrip(float("nan"))
    assert nan != nan
    assert list(_roundtrip({"a": 1}.keys())) == ["a"]
    assert list(_roundtrip({"a": 1}.values())) == [1]
    assert list(_roundtrip({"a": 1}.items())) == [("a", 1)]


def test_subclasses_arrive_as_their_base_and_never_run_their_methods():
    class Sneaky(int):
        def __eq__(self, other):
            return True

    class Liar(list):
        def __iter__(self):
            return iter([9, 9])

    point = namedtuple("Point", "x y")(1, 2)
    back = _roundtrip([Sneaky(3), Liar([1, 2]), point, IntEnum("E", "A B").B])
    assert back == [3, [1, 2], (1, 2), 2]
    assert [type(x) for x in back] == [int, list, tuple, int]


def test_non_plain_values_go_to_the_reference_hook():
    class A:
        pass

    with pytest.raises(TypeError):  # no hook: it cannot cross
        harness._encode([A()], None)
    seen = []
    data = harness._encode([1, A()], lambda v: seen.append(v) or b"h" + harness._encode(0, None))
    assert len(seen) == 1 and harness._decode(data, lambda tag, key: ("ref", tag, key)) == [
        1, ("ref", b"h", 0)]


@pytest.mark.parametrize("data", [
    b"", b"Q", b"i\xff\xff\xff\xff", b"s\x05\x00\x00\x00ab", b"l\x02\x00\x00\x00N",
    b"NN", b"f\x03xyz", b"S\x01\x00\x00\x00l\x00\x00\x00\x00",  # unhashable set member
    b"c" + b"i\x01\x00\x00\x00\x01" * 2, b"s\x01\x00\x00\x00\xff", b"h\x00",
    b"l\xff\xff\xff\x7f" + b"N" * 10,
])
def test_malformed_bytes_are_refused(data):
    with pytest.raises(harness._Garbled):
        harness._decode(data, lambda tag, key: (_ for _ in ()).throw(harness._Garbled("no refs")))


def test_decoding_is_bounded_in_depth_and_nodes():
    deep = b"l\x01\x00\x00\x00" * (harness._MAX_DEPTH + 5) + b"N"
    with pytest.raises(harness._Garbled):
        harness._decode(deep, None)
    wide = b"l" + (harness._MAX_PLAIN_NODES + 1).to_bytes(4, "little") + b"N" * (
        harness._MAX_PLAIN_NODES + 1)
    with pytest.raises(harness._Garbled):
        harness._decode(wide, None)
    nested = [[[[1]]]]
    assert harness._decode(harness._encode(nested, None), None) == nested


def test_remote_handles_refuse_comparison_and_truth():
    handle = harness._Remote(3, None)
    for probe in (lambda: handle == handle, lambda: bool(handle), lambda: handle < 1,
                  lambda: harness._strict_cmp(("Eq",), handle, 1)):
        with pytest.raises(harness.StrictComparisonError):
            probe()
    assert len({handle}) == 1  # hashable, so it can be passed back inside a set or dict
