"""Trusted test harness that runs INSIDE the code sandbox (stdlib only, Python >= 3.8).

Protocol (see rewards/sandbox/runner.py for the host side):
  stdin   one JSON object {"nonce": str, "code": str, "tests": [str, ...], "guard": [name, ...]},
          read fully and closed
          before any candidate code runs; the tests never touch the disk.
  stdout  `<nonce> ready`, then `<nonce> result <i> pass` or `<nonce> result <i> fail <json reason>`
          for every test, then `<nonce> done <n_tests>`. The host trusts nothing else.

Two processes, so the nonce never shares memory with candidate code:
  P (this process, pid 1 of the sandbox) forks the worker W *before* it reads stdin, so W's memory
    never holds the nonce. P then marks itself non-dumpable (W, same uid, can neither ptrace it nor
    open /proc/1/fd/1) and is the only writer of stdout.
  W points fds 0/1/2 at /dev/null, runs the candidate code, and only then asks P for the tests, so
    top-level candidate code cannot read them. Each test runs in a fresh copy of the candidate's
    globals with a pristine builtins dict, after an AST rewrite that sends every comparison and
    every truth test through a strict comparator: operands must be builtin types, recursively, so
    an object whose __eq__/__bool__ always says True fails. Floats compare with a tolerance. The
    functions named in "guard" (the entry point) are wrapped so that what they return must be
    builtin types too: a custom object never reaches test code (e.g. `abs(obj - y) < 1e-6` with
    an __abs__ returning 0).
  P prints a result line for a test only if W reported it, and `done` only if W reported all of
  them; an early os._exit(0), sys.exit(0), a crash or a kill of W leaves tests failed.

What this does NOT protect against: candidate code that deliberately introspects the interpreter
it runs in (gc, frames, ctypes, writing W's report pipe) can forge W's per-test reports or read
the test being executed from the caller's frame. That needs knowledge of this harness and is
a reward hack, not an escape: the sandbox around it still holds.
"""

from __future__ import annotations

import ast
import builtins
import collections
import json
import math
import operator
import os
import select
import struct
import sys

_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_NUMBERS = (bool, int, float)
_MAX_PLAIN_NODES = 1_000_000  # bound the cost of checking one compared value
_REL_TOL, _ABS_TOL = 1e-9, 1e-12  # float tolerance of strict ==
_MAX_MSG = 1 << 20  # largest W -> P message (the job may be larger: code + tests)


class StrictComparisonError(AssertionError):
    """A comparison or truth test in a test saw a value that is not made of builtin types."""


_DICT_LIKE = (collections.Counter, collections.OrderedDict, collections.defaultdict)
# Builtin lazy iterables a correct solution may return (`return map(...)`, a generator): they
# pass the return guard unchanged; whatever they yield is checked when a test compares it.
_LAZY = (type(x for x in ()), map, filter, zip, range, enumerate, reversed, type(iter([])),
         type(iter(())), type(iter("")), type(iter({}.items())), type({}.keys()),
         type({}.values()), type({}.items()))


def plain(value: object) -> object:
    """`value` rebuilt from exact builtin types; dict subclasses of `collections` become dicts.

    Raises StrictComparisonError for anything else, so no candidate-defined __eq__, __bool__,
    __abs__ ... ever runs in a test. Dict subclasses are read through dict's own methods, so a
    patched Counter.__iter__ cannot lie about the contents.
    """
    budget = [_MAX_PLAIN_NODES]

    def rebuild(v: object, depth: int) -> object:
        budget[0] -= 1
        if budget[0] < 0 or depth > 200:
            raise StrictComparisonError("compared value too large or too deep")
        t = type(v)
        if t in _SCALARS:
            return v
        if t in (list, tuple):
            return t(rebuild(x, depth + 1) for x in v)
        if t in (set, frozenset):
            return t(rebuild(x, depth + 1) for x in v)
        if t is dict or t in _DICT_LIKE:
            return {rebuild(k, depth + 1): rebuild(x, depth + 1)
                    for k, x in zip(dict.keys(v), dict.values(v))}
        raise StrictComparisonError(f"non-builtin value of type {t.__qualname__!s:.80}")

    return rebuild(value, 0)


def guard(fn: object) -> object:
    """Wrap the function under test: its return value must be plain (or a builtin iterator)."""
    def guarded(*args: object, **kwargs: object) -> object:
        value = fn(*args, **kwargs)
        if type(value) in _LAZY:
            return value
        return plain(value)

    return guarded


def _strict_eq(a: object, b: object) -> bool:
    """Equality of two plain values: numbers across bool/int/float, floats within a tolerance."""
    ta, tb = type(a), type(b)
    if ta in _NUMBERS and tb in _NUMBERS:
        if ta is float or tb is float:
            return a == b or math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)
        return a == b
    if ta is not tb:
        if ta in (set, frozenset) and tb in (set, frozenset):
            return a == b
        if complex in (ta, tb) and ta in _NUMBERS + (complex,) and tb in _NUMBERS + (complex,):
            return a == b
        return False
    if ta in (list, tuple):
        return len(a) == len(b) and all(_strict_eq(x, y) for x, y in zip(a, b))
    if ta is dict:
        return a.keys() == b.keys() and all(_strict_eq(a[k], b[k]) for k in a)
    return a == b  # str, bytes, None, complex, sets: builtin __eq__ over plain members


_ORDER_OPS = {"Lt": operator.lt, "LtE": operator.le, "Gt": operator.gt, "GtE": operator.ge,
              "In": lambda a, b: a in b, "NotIn": lambda a, b: a not in b}


def _strict_cmp(ops: tuple, *operands: object) -> bool:
    """Evaluate a comparison chain (operands already evaluated) with strict semantics."""
    for op, left, right in zip(ops, operands, operands[1:]):
        if op == "Is":
            ok = left is right
        elif op == "IsNot":
            ok = left is not right
        else:
            left, right = plain(left), plain(right)
            if op == "Eq":
                ok = _strict_eq(left, right)
            elif op == "NotEq":
                ok = not _strict_eq(left, right)
            else:
                ok = bool(_ORDER_OPS[op](left, right))
        if not ok:
            return False
    return True


def _strict_truth(value: object) -> bool:
    return bool(value if type(value) in _SCALARS else plain(value))


class _StrictRewriter(ast.NodeTransformer):
    """Route comparisons and truth tests in TEST code through _strict_cmp / _strict_truth."""

    def _truth(self, node: ast.expr) -> ast.expr:
        return ast.Call(ast.Name("__bgpo_truth__", ast.Load()), [node], [])

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        ops = ast.Tuple([ast.Constant(type(op).__name__) for op in node.ops], ast.Load())
        args = [ops, node.left, *node.comparators]
        return ast.Call(ast.Name("__bgpo_cmp__", ast.Load()), args, [])

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        self.generic_visit(node)
        node.test = self._truth(node.test)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = self._truth(node.operand)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        self.generic_visit(node)
        node.values = [self._truth(v) for v in node.values]
        return node

    def _visit_test_holder(self, node):  # If, While, IfExp: their `test` is a truth test
        self.generic_visit(node)
        node.test = self._truth(node.test)
        return node

    visit_If = visit_While = visit_IfExp = _visit_test_holder


def rewrite_test(source: str, filename: str) -> object:
    """Compile test source with strict comparisons (public for the host-side unit tests)."""
    tree = _StrictRewriter().visit(ast.parse(source, filename))
    return compile(ast.fix_missing_locations(tree), filename, "exec")


def _send(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    os.write(fd, struct.pack("<Q", len(data)) + data)


def _recv(fd: int, limit: int) -> dict | None:
    """One length-prefixed JSON message, or None on EOF / garbage."""
    head = _read_exact(fd, 8)
    if head is None:
        return None
    (size,) = struct.unpack("<Q", head)
    if size > limit:
        return None
    body = _read_exact(fd, size)
    try:
        return json.loads(body) if body is not None else None
    except ValueError:
        return None


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


_BUILTIN_EXCEPTIONS = frozenset(v for v in vars(builtins).values()
                                if isinstance(v, type) and issubclass(v, BaseException))


def _describe(exc: BaseException) -> str:
    """A short reason that never runs candidate-defined __str__/__repr__."""
    t = type(exc)
    if t is StrictComparisonError:
        return f"strict comparison: {exc}"[:300]
    if t not in _BUILTIN_EXCEPTIONS:
        return "exception of a non-builtin type"
    try:
        plain(exc.args)
        return f"{t.__name__}: {exc}"[:300]
    except BaseException:
        return t.__name__


def _worker(job_r: int, res_w: int) -> None:
    """W: run candidate code, then the tests; report over res_w. Never returns."""
    send, exit_now = _send, os._exit  # bound before candidate code can patch the modules
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    clean_builtins = dict(vars(builtins))
    code_msg = _recv(job_r, 1 << 62)
    if code_msg is None:
        exit_now(3)
    env = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(compile(code_msg["code"], "<candidate>", "exec"), env)
        send(res_w, {"kind": "loaded", "ok": True})
    except BaseException as e:  # the candidate's failure is a test failure, not a harness error
        send(res_w, {"kind": "loaded", "ok": False, "err": "candidate code: " + _describe(e)})
    tests_msg = _recv(job_r, 1 << 62)
    if tests_msg is None:
        exit_now(3)
    guarded = {name: guard(env[name]) for name in tests_msg.get("guard", [])
               if callable(env.get(name))}
    for i, src in enumerate(tests_msg["tests"]):
        scope = dict(env)
        scope.update(guarded, __builtins__=dict(clean_builtins), __name__="__test__",
                     __bgpo_cmp__=_strict_cmp, __bgpo_truth__=_strict_truth)
        try:
            exec(rewrite_test(src, f"<test {i}>"), scope)
            send(res_w, {"kind": "result", "i": i, "ok": True})
        except BaseException as e:
            send(res_w, {"kind": "result", "i": i, "ok": False, "err": _describe(e)})
    send(res_w, {"kind": "done"})
    exit_now(0)


def _make_undumpable() -> None:
    """PR_SET_DUMPABLE=0: W (same uid) can no longer ptrace P or open /proc/1/fd/*."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except Exception as e:  # the nonce still keeps forged lines out; say so on stderr
        print(f"harness: could not set non-dumpable: {e}", file=sys.stderr)


def _collect(res_r: int, pid: int) -> tuple[dict, str]:
    """Read W's reports until `done`, or W's death (even if a grandchild holds the pipe)."""
    results: dict = {}
    exited = False
    while True:
        ready, _, _ = select.select([res_r], [], [], 0.05)
        if ready:
            msg = _recv(res_r, _MAX_MSG)
            if msg is None:
                return results, "worker stopped reporting"
            if msg.get("kind") == "done":
                return results, ""
            if msg.get("kind") == "result" and isinstance(msg.get("i"), int):
                results.setdefault(msg["i"], (bool(msg.get("ok")), str(msg.get("err", ""))))
            continue
        if exited:
            return results, "worker exited before reporting all tests"
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            exited = True  # one more select round drains what it wrote before dying


def main() -> None:
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(job_w)
        os.close(res_r)
        _worker(job_r, res_w)
    os.close(job_r)
    os.close(res_w)
    job = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    _make_undumpable()
    nonce, tests = str(job["nonce"]), list(job["tests"])
    out = sys.stdout
    out.write(f"{nonce} ready\n")
    out.flush()
    _send(job_w, {"code": job["code"]})
    loaded = _recv(res_r, _MAX_MSG)
    load_err = ""
    if loaded is None or loaded.get("kind") != "loaded":
        load_err = "worker died while loading the candidate"
    elif not loaded.get("ok"):
        load_err = str(loaded.get("err", "candidate failed to load"))
    results: dict = {}
    if not load_err:
        try:
            _send(job_w, {"tests": tests, "guard": list(job.get("guard", []))})
        except OSError:
            load_err = "worker died before the tests"
    if not load_err:
        results, why = _collect(res_r, pid)
    else:
        why = load_err
    for i in range(len(tests)):
        ok, err = results.get(i, (False, why or "not reported"))
        if ok:
            out.write(f"{nonce} result {i} pass\n")
        else:
            out.write(f"{nonce} result {i} fail {json.dumps(err[:300])}\n")
    if len(results) == len(tests) and not why:
        out.write(f"{nonce} done {len(tests)}\n")
    out.flush()
    os._exit(0)  # as pid 1 our exit makes the kernel kill whatever W left behind


if __name__ == "__main__":
    main()
