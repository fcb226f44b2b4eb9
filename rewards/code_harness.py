"""Trusted test harness that runs INSIDE the code sandbox (stdlib only, Python >= 3.8).

It runs under the sandbox's interpreter (often the system Python, which may be older than the
project's), hence no zip(strict=) and no 3.10+ syntax at run time.

Protocol (see rewards/sandbox/runner.py for the host side):
  stdin   one marshalled dict {"nonce": str, "code": str, "tests": [str, ...], "guard": [name]}
          from the trusted host (marshal, not json: importing json costs more than the rest of
          the harness), read fully and closed before any candidate code runs; the tests never
          touch the disk.
  stdout  `<nonce> ready`, then `<nonce> result <i> pass` or `<nonce> result <i> fail <hex
          reason>` for every test, then `<nonce> done <n_tests>`. The host trusts nothing else.
  W -> P  text lines parsed with str methods only (W runs candidate code: never unmarshal
          anything it sends).

Two processes, so the nonce never shares memory with candidate code:
  P (this process, pid 1 of the sandbox) forks the worker W *before* it reads stdin, so W's memory
    never holds the nonce. P then marks itself non-dumpable (W, same uid, can neither ptrace it nor
    open /proc/1/fd/1) and is the only writer of stdout.
  W points fds 0/1/2 at /dev/null, runs the candidate code, and only then asks P for the tests, so
    top-level candidate code cannot read them. Each test runs in a fresh copy of the candidate's
    globals with a pristine builtins dict. The host rewrote the tests' AST so that every
    comparison and every truth test goes through this module's strict comparator: operands must
    be builtin types, recursively, so an object whose __eq__/__bool__ always says True fails
    (subclasses of builtin types are read through the base type's C methods and compared as
    the base: a namedtuple or an IntEnum still passes, its overridden methods never run). Floats compare with a tolerance. The
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

# Start-up is part of every run's cost, so only built-in modules and math/select (small C
# extensions) are imported: `posix` is what `os` wraps, and importing `os` itself (with
# _collections_abc, posixpath, stat) or `operator` would add about 0.8 ms per run. No
# `from __future__ import annotations` either (one more import): annotations that Python 3.8
# cannot evaluate are strings.
import builtins
import marshal
import math
import posix
import select
import sys

_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_NUMBERS = (bool, int, float)
_MAX_PLAIN_NODES = 1_000_000  # bound the cost of checking one compared value
_REL_TOL, _ABS_TOL = 1e-9, 1e-12  # float tolerance of strict ==
_MAX_MSG = 1 << 20  # longest W -> P report line


class StrictComparisonError(AssertionError):
    """A comparison or truth test in a test saw a value that is not made of builtin types."""


# Subclasses of builtin types (an IntEnum member, a namedtuple, a Counter) are read through the
# BASE type's own C methods, which a subclass cannot override, and become exact builtin values:
# Python's == treats them like their base, and no subclass method ever runs.
_BASE_READERS = (
    (int, int.__int__), (float, float.__float__), (str, str.__str__),
    (tuple, lambda v: tuple(tuple.__iter__(v))), (list, lambda v: list(list.__iter__(v))),
    (frozenset, lambda v: frozenset(frozenset.__iter__(v))), (set, lambda v: set(set.__iter__(v))),
)
_LAZY = (type(x for x in ()), map, filter, zip, range, enumerate, reversed, type(iter([])),
         type(iter(())), type(iter("")), type(iter({}.items())), type({}.keys()),
         type({}.values()), type({}.items()))


def plain(value: object) -> object:
    """`value` rebuilt from exact builtin types (subclasses read through their base's methods).

    Raises StrictComparisonError for anything else, so no candidate-defined __eq__, __bool__,
    __abs__ ... ever runs in a test.
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
        if issubclass(t, dict):  # type(v) cannot lie, unlike v.__class__
            return {rebuild(k, depth + 1): rebuild(x, depth + 1)
                    for k, x in zip(dict.keys(v), dict.values(v))}  # noqa: B905 (3.8)
        for base, read in _BASE_READERS:
            if issubclass(t, base):
                return rebuild(read(v), depth + 1)
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
        return len(a) == len(b) and all(_strict_eq(x, y) for x, y in zip(a, b))  # noqa: B905
    if ta is dict:
        return a.keys() == b.keys() and all(_strict_eq(a[k], b[k]) for k in a)
    return a == b  # str, bytes, None, complex, sets: builtin __eq__ over plain members


_ORDER_OPS = {"Lt": lambda a, b: a < b, "LtE": lambda a, b: a <= b,
              "Gt": lambda a, b: a > b, "GtE": lambda a, b: a >= b,
              "In": lambda a, b: a in b, "NotIn": lambda a, b: a not in b}


def _strict_cmp(ops: tuple, *operands: object) -> bool:
    """Evaluate a comparison chain (operands already evaluated) with strict semantics."""
    for op, left, right in zip(ops, operands, operands[1:]):  # noqa: B905
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


def compile_test(source: str, filename: str) -> object:
    """Compile one test. The host already rewrote it (rewards/sandbox/strict_rewrite.py) so that
    comparisons and truth tests call __bgpo_cmp__ / __bgpo_truth__; doing that on the host spares
    every sandboxed run the import of `ast`."""
    return compile(source, filename, "exec")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view):]


def _read_to_eof(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = posix.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _report(fd: int, kind: str, i: int = -1, ok: bool = False, why: str = "") -> None:
    """W -> P: one text line. P parses it with str methods only: W is not trusted."""
    _write_all(fd, f"{kind} {i} {int(ok)} {why.encode('utf-8', 'replace').hex()}\n".encode())


class _Reports:
    """P's reader of W's report lines: bounded, never blocks past W's death."""

    def __init__(self, fd: int, pid: int) -> None:
        self.fd, self.pid, self.buf, self.exited = fd, pid, b"", False

    def next(self) -> "tuple[str, int, bool, str] | None":
        """The next well-formed line, or None when W is gone or misbehaves."""
        while b"\n" not in self.buf:
            if len(self.buf) > _MAX_MSG:
                return None
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                chunk = posix.read(self.fd, 1 << 16)
                if not chunk:
                    return None
                self.buf += chunk
            elif self.exited:
                return None  # W is dead and a descendant holds the pipe without writing
            elif posix.waitpid(self.pid, posix.WNOHANG)[0]:
                self.exited = True  # one more round drains what W wrote before dying
        line, self.buf = self.buf.split(b"\n", 1)
        parts = line.decode("ascii", "replace").split(" ")
        if len(parts) != 4 or not parts[1].lstrip("-").isdigit() or parts[2] not in "01":
            return None
        try:
            why = bytes.fromhex(parts[3]).decode("utf-8", "replace")
        except ValueError:
            return None
        return parts[0], int(parts[1]), parts[2] == "1", why


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
    report, exit_now = _report, posix._exit  # bound before candidate code can patch the modules
    devnull = posix.open("/dev/null", posix.O_RDWR)
    for fd in (0, 1, 2):
        posix.dup2(devnull, fd)
    clean_builtins = dict(vars(builtins))
    code = _read_message(job_r)
    env = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(compile(code, "<candidate>", "exec"), env)
        report(res_w, "loaded", ok=True)
    except BaseException as e:  # the candidate's failure is a test failure, not a harness error
        report(res_w, "loaded", why="candidate code: " + _describe(e))
    tests_msg = _read_message(job_r)
    if not isinstance(tests_msg, dict):
        exit_now(3)
    guarded = {name: guard(env[name]) for name in tests_msg["guard"] if callable(env.get(name))}
    for i, src in enumerate(tests_msg["tests"]):
        scope = dict(env)
        scope.update(guarded, __builtins__=dict(clean_builtins), __name__="__test__",
                     __bgpo_cmp__=_strict_cmp, __bgpo_truth__=_strict_truth)
        try:
            exec(compile_test(src, f"<test {i}>"), scope)
            report(res_w, "result", i, True)
        except BaseException as e:
            report(res_w, "result", i, False, _describe(e))
    report(res_w, "done")
    exit_now(0)


def _read_message(fd: int) -> object:
    """P -> W: one length-prefixed marshalled object."""
    head = posix.read(fd, 8)
    while len(head) < 8:
        more = posix.read(fd, 8 - len(head))
        if not more:
            posix._exit(3)
        head += more
    size = int.from_bytes(head, "little")
    chunks, got = [], 0
    while got < size:
        chunk = posix.read(fd, min(size - got, 1 << 20))
        if not chunk:
            posix._exit(3)
        chunks.append(chunk)
        got += len(chunk)
    return marshal.loads(b"".join(chunks))  # written by P, which is trusted


def _send_message(fd: int, obj: object) -> None:
    data = marshal.dumps(obj, 4)
    _write_all(fd, len(data).to_bytes(8, "little") + data)


def _make_undumpable() -> None:
    """PR_SET_DUMPABLE=0: W (same uid) can no longer ptrace P or open /proc/1/fd/*.

    Calls prctl through _ctypes, ctypes' C core: importing the ctypes package costs about 2.5 ms
    per run (a quarter of the interpreter's start-up), the core alone about 0.3 ms. The package is
    the fallback where the core's private functions differ.
    """
    try:
        try:
            import _ctypes

            prctl = _ctypes.dlsym(_ctypes.dlopen(None, 0x102), "prctl")  # RTLD_NOW | RTLD_GLOBAL
            failed = _ctypes.call_function(prctl, (4, 0, 0, 0, 0)) != 0  # PR_SET_DUMPABLE, 0
        except (ImportError, AttributeError, TypeError):
            import ctypes

            failed = ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0
        if failed:
            raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")
    except Exception as e:  # the nonce still keeps forged lines out; say so on stderr
        print(f"harness: could not set non-dumpable: {e}", file=sys.stderr)


def main() -> None:
    job_r, job_w = posix.pipe()
    res_r, res_w = posix.pipe()
    pid = posix.fork()
    if pid == 0:
        posix.close(job_w)
        posix.close(res_r)
        _worker(job_r, res_w)
    posix.close(job_r)
    posix.close(res_w)
    job = marshal.loads(_read_to_eof(0))  # from the host verifier, which is trusted
    devnull = posix.open("/dev/null", posix.O_RDONLY)
    posix.dup2(devnull, 0)
    _make_undumpable()
    nonce, tests = str(job["nonce"]), list(job["tests"])
    out = sys.stdout
    out.write(f"{nonce} ready\n")
    out.flush()
    reports = _Reports(res_r, pid)
    results: dict = {}
    why = ""
    try:
        _send_message(job_w, job["code"])
        loaded = reports.next()
        if loaded is None or loaded[0] != "loaded":
            why = "worker died while loading the candidate"
        elif not loaded[2]:
            why = loaded[3] or "candidate failed to load"
        else:
            _send_message(job_w, {"tests": tests, "guard": list(job.get("guard", []))})
    except OSError:  # W closed its end: it died
        why = "worker died before the tests"
    while not why:
        msg = reports.next()
        if msg is None:
            why = "worker stopped reporting before the end"
        elif msg[0] == "done":
            break
        elif msg[0] == "result" and 0 <= msg[1] < len(tests):
            results.setdefault(msg[1], (msg[2], msg[3]))
    for i in range(len(tests)):
        ok, err = results.get(i, (False, why or "not reported"))
        if ok:
            out.write(f"{nonce} result {i} pass\n")
        else:
            out.write(f"{nonce} result {i} fail {err[:300].encode('utf-8', 'replace').hex()}\n")
    if len(results) == len(tests) and not why:
        out.write(f"{nonce} done {len(tests)}\n")
    out.flush()
    posix._exit(0)  # as pid 1 our exit makes the kernel kill whatever W left behind


if __name__ == "__main__":
    main()
