"""Trusted test harness that runs INSIDE the code sandbox (stdlib only, Python >= 3.8).

It runs under the sandbox's interpreter (often the system Python, which may be older than the
project's), hence no zip(strict=) and no 3.10+ syntax at run time. It is one file because the
launcher stages one file into the sandbox.

The verdict is computed where candidate code cannot reach it. Two processes:
  P (this process, pid 1 of the sandbox, trusted) runs the TESTS and never imports or executes
    candidate code. It forks W *before* it reads the job (so W's memory never holds the nonce),
    marks itself non-dumpable (W, same uid, can neither ptrace it nor open /proc/1/*), and is the
    only writer of the verdict channel: a private copy of stdout (fd 1 itself points at
    /dev/null, so nothing a test prints or a module imports can write there).
  W (the worker) points fds 0/1/2 at /dev/null, runs the candidate code, tells P its top-level
    names (only those the tests reference) with a kind each, and then serves calls. Patching
    anything in W (its modules, builtins, __main__, frames, gc, ctypes, its pipe to P) changes
    only what W answers, i.e. the candidate's own return values.
In P, each test runs in a fresh scope built from W's names:
  module    imported fresh in P by its name (a trusted stdlib copy: -I -S and a read-only /usr, so
            no candidate file can shadow it; a few modules with import-time side effects are
            refused); if the import fails the name is absent.
  callable  a proxy function defined by P: a call sends (name, args, kwargs) to W and waits.
  value     a copy decoded from plain data (non-plain parts become handles, see below).
  Names of builtins are never taken from W (a candidate `def abs(x): return 0` does not reach
  the test), except the functions under test (`guard`).
The test's own imports (`import math`) run in P, so W's patched modules never matter; HumanEval's
tests carry the prompt's helpers (rewards/tasks/humaneval.py), so those run in P too.

Values cross as type-tagged plain data (None, bool, int, float, complex, str, bytes, list, tuple,
dict, set, frozenset, range, dict views), read by a hand-written decoder that is bounded in
size, depth and node count and builds exact builtin types only (W's encoder reads a namedtuple
or an IntEnum through its base type's C methods, so it arrives as the base, like plain() below;
a lying W can only send other plain data). Nothing W sends is ever unmarshalled or unpickled. Exceptions cross as the nearest builtin exception type
(by name, looked up in P's own table) and a capped message; other types become CandidateError.
Fallbacks for values that cannot cross as plain data:
  - the functions under test (`guard`, the entry point) must return plain data or a builtin
    iterator (a generator, map, zip ...): an iterator becomes a P-side iterator that pulls items
    one at a time from W (items must be plain), so infinite generators work with next(). Anything
    else fails the test with a strict-comparison error (the rule before this design too).
  - any other callable (e.g. an MBPP test that builds `Pair(5, 24)` from a candidate class and
    passes it to the function) returns plain parts as values and each non-plain part as a remote
    handle: an opaque P object that can only be passed back to W as an argument. Comparing a
    handle or testing its truth raises StrictComparisonError; attributes and methods of a handle
    are not available (such a test fails).
  - arguments must be plain data, handles or proxies; anything else (a lambda defined by the test)
    cannot cross, and the call raises TypeError (the test fails).
  - arguments and results are copies: what the callee does to its arguments is not seen by P,
    and a set arrives with the same members but maybe another iteration order (CPython's set
    order depends on how the set was built; dicts keep theirs).
Comparisons: the host rewrote every comparison and truth test of the tests' AST
(rewards/sandbox/strict_rewrite.py) to call this module's strict comparator, which now runs in P
on P-built values: floats compare with a tolerance, handles and other non-builtin values fail.

Protocol (see rewards/sandbox/runner.py for the host side):
  stdin   one marshalled dict {"nonce": str, "code": str, "tests": [str, ...], "guard": [name]}
          from the trusted host, read fully and closed before any candidate code runs; the tests
          never leave P.
  stdout  `<nonce> ready`, then `<nonce> result <i> pass` or `<nonce> result <i> fail <hex
          reason>` for every test, then `<nonce> done <n_tests>` only if every test was judged.
  P <-> W length-prefixed frames of the tagged encoding. A call W never answers runs into the
          run's deadline (the supervisor kills the sandbox: timeout). W dying (os._exit, a crash)
          fails the test in progress and every later one.
What W learns: the candidate's own code, the names (not the values) the tests reference, and the
arguments of each call; never the tests' source, expected values or the nonce.
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
_NUMBERS = (bool, int, float)
_MAX_PLAIN_NODES = 1_000_000  # bound the cost of checking, encoding or decoding one value
_MAX_DEPTH = 200
_REL_TOL, _ABS_TOL = 1e-9, 1e-12  # float tolerance of strict ==
_MAX_MSG = 16 << 20  # longest W -> P frame
_MAX_REASON = 300  # longest failure reason / exception message that crosses
# Modules P never imports for a name W reports: they act at import (open a browser, print, start
# a GUI, touch the terminal, run the regression tests). Names with a dunder part (`__main__`,
# `__hello__`) are refused too. No other top-level stdlib module of Python 3.11 starts a process
# or prints at import (checked with strace over all of them).
_NO_IMPORT = frozenset(("antigravity", "this", "idlelib", "turtledemo", "turtle", "tkinter",
                        "webbrowser", "readline", "ensurepip", "venv", "test", "lib2to3"))


class StrictComparisonError(AssertionError):
    """A comparison or truth test in a test saw a value that is not made of builtin types."""


class CandidateError(Exception):
    """Candidate code raised an exception of a non-builtin type, or W answered garbage."""


class _WorkerGone(BaseException):
    """W died or broke the frame protocol: this test and every later one fail. A BaseException,
    so a test's `except Exception` cannot swallow it (P also checks after every test)."""


# ----- strict comparison (runs in P) ------------------------------------------------------------
# Subclasses of builtin types (an IntEnum member, a namedtuple, a Counter) are read through the
# BASE type's own C methods, which a subclass cannot override, and become exact builtin values:
# Python's == treats them like their base, and no subclass method ever runs.
_BASE_READERS = (
    (int, int.__int__), (float, float.__float__), (str, str.__str__),
    (tuple, lambda v: tuple(tuple.__iter__(v))), (list, lambda v: list(list.__iter__(v))),
    (frozenset, lambda v: frozenset(frozenset.__iter__(v))), (set, lambda v: set(set.__iter__(v))),
)


def plain(value: object) -> object:
    """`value` rebuilt from exact builtin types (subclasses read through their base's methods).

    Raises StrictComparisonError for anything else, so no non-builtin __eq__, __bool__, __abs__
    ... ever decides a test.
    """
    budget = [_MAX_PLAIN_NODES]

    def rebuild(v: object, depth: int) -> object:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_DEPTH:
            raise StrictComparisonError("compared value too large or too deep")
        t = type(v)
        if t in _SCALARS:
            return v
        if t in (list, tuple, set, frozenset):
            return t(rebuild(x, depth + 1) for x in v)
        if issubclass(t, dict):  # type(v) cannot lie, unlike v.__class__
            return {rebuild(k, depth + 1): rebuild(x, depth + 1)
                    for k, x in zip(dict.keys(v), dict.values(v))}  # noqa: B905 (3.8)
        for base, read in _BASE_READERS:
            if issubclass(t, base):
                return rebuild(read(v), depth + 1)
        raise StrictComparisonError(f"non-builtin value of type {t.__qualname__!s:.80}")

    return rebuild(value, 0)


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


# ----- the tagged encoding (both directions) ------------------------------------------------------
# Iterators a function under test may return (they cross as remote iterators); ranges and dict
# views cross by value.
_LAZY = (type(x for x in ()), map, filter, zip, enumerate, reversed, type(iter([])),
         type(iter(())), type(iter("")), type(iter({}.items())), type(iter({})),
         type(iter({}.values())), type(iter(set())), type(iter(range(0))),
         type(reversed([])))
_VIEWS = {type({}.keys()): b"K", type({}.values()): b"V", type({}.items()): b"I"}
_SEQ_TAGS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z"}


class _NotPlain(Exception):
    """The value (or a part of it) is not plain data; args[0] names its type."""


class _Garbled(Exception):
    """A frame that does not decode: too large, too deep, truncated, or an unknown tag."""


def _encode(value: object, ref) -> bytes:
    """`value` as tagged bytes; a non-plain part goes to `ref(part)`, which returns its tagged
    bytes (a handle) or raises _NotPlain."""
    out = bytearray()
    budget = [_MAX_PLAIN_NODES]

    def enc(v: object, depth: int) -> None:
        nonlocal out
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_DEPTH:
            raise _NotPlain("value too large or too deep")
        t = type(v)
        if t is int:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            out += b"i" + len(raw).to_bytes(4, "little") + raw
        elif t is str or t is bytes:
            raw = v.encode("utf-8", "surrogatepass") if t is str else v
            out += (b"s" if t is str else b"b") + len(raw).to_bytes(4, "little") + raw
        elif t is float:
            text = float.hex(v).encode()
            out += b"f" + bytes((len(text),)) + text
        elif v is None:
            out += b"N"
        elif t is bool:
            out += b"T" if v else b"F"
        elif t is list or t is tuple or t is set or t is frozenset:
            out += _SEQ_TAGS[t] + len(v).to_bytes(4, "little")
            for x in v:
                enc(x, depth + 1)
        elif t is dict:
            out += b"d" + len(v).to_bytes(4, "little")
            for k, x in v.items():
                enc(k, depth + 1)
                enc(x, depth + 1)
        elif t is complex:
            out += b"c"
            enc(v.real, depth + 1)
            enc(v.imag, depth + 1)
        elif t is range:
            out += b"r"
            for x in (v.start, v.stop, v.step):
                enc(x, depth + 1)
        elif t in _VIEWS:
            out += _VIEWS[t]
            enc(list(v), depth + 1)
        elif issubclass(t, dict):
            enc(dict(zip(dict.keys(v), dict.values(v))), depth + 1)  # noqa: B905 (3.8)
        else:
            for base, read in _BASE_READERS:
                if issubclass(t, base):
                    return enc(read(v), depth + 1)
            out += ref(v)

    enc(value, 0)
    return bytes(out)


_CONTAINER_TYPES = {ord("l"): list, ord("t"): tuple, ord("S"): set, ord("z"): frozenset}


def _decode(data: bytes, ref, start: int = 0) -> object:
    """Rebuild a value from tagged bytes (from `start` to the end), exact builtin types only;
    `ref(tag, payload)` turns a handle (b"h" + int, b"n" + name) into an object. Raises _Garbled
    on anything malformed."""
    end = len(data)
    state = [start, _MAX_PLAIN_NODES]  # read position, nodes left
    from_bytes = int.from_bytes

    def sized(pos: int) -> "tuple[int, int]":
        """(count, position after it); a count past the frame's end is refused: every item
        takes at least one byte."""
        n = from_bytes(data[pos:pos + 4], "little")
        if pos + 4 > end or pos + 4 + n > end:
            raise _Garbled("length past the end of the frame")
        return n, pos + 4

    def dec(depth: int) -> object:
        pos = state[0]
        state[1] -= 1
        if state[1] < 0 or depth > _MAX_DEPTH:
            raise _Garbled("value too large or too deep")
        if pos >= end:
            raise _Garbled("truncated frame")
        tag = data[pos]
        state[0] = pos + 1
        if tag in (105, 115, 98):  # i s b: a sized byte string
            n, pos = sized(pos + 1)
            state[0] = pos + n
            raw = data[pos:pos + n]
            if tag == 105:
                return from_bytes(raw, "little", signed=True)
            return raw.decode("utf-8", "surrogatepass") if tag == 115 else raw
        if tag in _CONTAINER_TYPES:
            n, state[0] = sized(pos + 1)
            return _CONTAINER_TYPES[tag]([dec(depth + 1) for _ in range(n)])
        if tag == 102:  # f
            n = data[pos + 1] if pos + 1 < end else end
            if pos + 2 + n > end:
                raise _Garbled("truncated frame")
            state[0] = pos + 2 + n
            return float.fromhex(data[pos + 2:pos + 2 + n].decode("ascii"))
        if tag == 78:  # N
            return None
        if tag == 84 or tag == 70:  # T F
            return tag == 84
        if tag == 100:  # d
            n, state[0] = sized(pos + 1)
            return dict([(dec(depth + 1), dec(depth + 1)) for _ in range(n)])
        if tag == 99:  # c
            re, im = dec(depth + 1), dec(depth + 1)
            if type(re) is not float or type(im) is not float:
                raise _Garbled("complex of non-floats")
            return complex(re, im)
        if tag == 114:  # r
            lo, hi, step = dec(depth + 1), dec(depth + 1), dec(depth + 1)
            if not (type(lo) is type(hi) is type(step) is int):
                raise _Garbled("range of non-ints")
            return range(lo, hi, step)
        if tag in (75, 86, 73):  # K V I: dict views, rebuilt from a list
            items = dec(depth + 1)
            if type(items) is not list:
                raise _Garbled("dict view of a non-list")
            if tag == 75:
                return dict.fromkeys(items).keys()
            if tag == 86:
                return dict(enumerate(items)).values()
            if not all(type(p) is tuple and len(p) == 2 for p in items):
                raise _Garbled("dict items that are not pairs")
            return dict(items).items()
        if tag == 104 or tag == 110:  # h n: references
            return ref(bytes((tag,)), dec(depth + 1))
        raise _Garbled(f"unknown tag {tag}")

    try:
        value = dec(0)
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError, IndexError) as e:
        raise _Garbled(f"{type(e).__name__} while decoding") from None  # e.g. unhashable keys
    if state[0] != end:
        raise _Garbled("bytes after the value")
    return value


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(8, "little") + payload


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


_BUILTIN_EXCEPTIONS = {name: v for name, v in vars(builtins).items()
                       if isinstance(v, type) and issubclass(v, BaseException)}


def _describe(exc: BaseException) -> str:
    """A short reason; in P every exception is P-built, so no candidate __str__ runs."""
    t = type(exc)
    if t is StrictComparisonError:
        return f"strict comparison: {exc}"[:_MAX_REASON]
    if t is CandidateError:
        return f"{exc}"[:_MAX_REASON]
    if _BUILTIN_EXCEPTIONS.get(t.__name__) is not t:
        return "exception of a non-builtin type"
    try:
        plain(exc.args)
        return f"{t.__name__}: {exc}"[:_MAX_REASON]
    except BaseException:
        return t.__name__


# ----- W: runs the candidate, serves calls -------------------------------------------------------
def _worker(req_r: int, rep_w: int) -> None:
    """W: run candidate code, report the names the tests want, serve calls. Never returns."""
    exit_now = posix._exit  # bound before candidate code can patch the modules
    devnull = posix.open("/dev/null", posix.O_RDWR)
    for fd in (0, 1, 2):
        posix.dup2(devnull, fd)
    handles: dict = {}

    def store(v: object) -> int:  # a non-plain object stays here; P gets its number
        handles[len(handles)] = v
        return len(handles) - 1

    def keep(v: object) -> bytes:
        return b"h" + _encode(store(v), None)

    def refuse(v: object) -> bytes:
        raise _NotPlain(type(v).__qualname__)

    def resolve(tag: bytes, key: object) -> object:  # P's references to W's objects
        return handles[key] if tag == b"h" else env[key]

    pending = bytearray()

    def recv() -> bytes:  # one frame from P; a read takes whatever P has written so far
        while len(pending) < 8 or len(pending) < 8 + int.from_bytes(pending[:8], "little"):
            chunk = posix.read(req_r, 1 << 20)
            if not chunk:
                exit_now(3)  # P is gone
            pending.extend(chunk)
        size = 8 + int.from_bytes(pending[:8], "little")
        frame = bytes(pending[8:size])
        del pending[:size]
        return frame

    def send(*reply: object) -> None:
        _write_all(rep_w, _frame(_encode(reply, None)))

    def as_data(value: object, guarded: bool) -> tuple:
        """("ok", tagged value) or, for a function under test, ("notplain", type name)."""
        try:
            return "ok", _encode(value, refuse if guarded else keep)
        except _NotPlain as e:
            if guarded:
                return "notplain", str(e.args[0])[:80]
            return "ok", keep(value)  # too large or too deep as data: P gets a handle

    env = {"__name__": "__candidate__", "__builtins__": builtins}
    code = _decode(recv(), None)
    failure = None
    try:
        exec(compile(code, "<candidate>", "exec"), env)
    except BaseException as e:  # the candidate's failure is a test failure, not a harness error
        failure = "candidate code: " + _describe(e)
    wanted = _decode(recv(), None)
    if failure is not None:
        send("failed", failure)
        exit_now(0)
    names = []
    for name in wanted:
        if name not in env:
            continue
        v = env[name]
        if isinstance(v, type(builtins)) and type(v.__name__) is str:
            names.append((name, "module", v.__name__))
        elif callable(v):
            names.append((name, "callable", None))
        else:
            names.append((name, "value", as_data(v, False)[1]))
    send("loaded", names)
    while True:
        data = recv()
        try:
            op, target, args, kwargs, guarded = _decode(data, resolve)
            fn = handles[target] if type(target) is int else env[target]
            value = next(fn) if op == "next" else fn(*args, **kwargs)
            if type(value) in _LAZY:
                send("iter", store(value))
            else:
                send(*as_data(value, guarded))
        except BaseException as e:  # noqa: BLE001 (the candidate's exception is its answer)
            base = next((c for c in type(e).__mro__ if _BUILTIN_EXCEPTIONS.get(c.__name__) is c),
                        None)
            try:
                text = str(e)[:_MAX_REASON]
            except BaseException:
                text = ""
            send("exc", base.__name__ if base is not None else "", text)


# ----- P: runs the tests --------------------------------------------------------------------------
_CLEAN_BUILTINS = dict(vars(builtins))  # P's builtins, which no candidate code ever touches


class _Remote:
    """A candidate object that is not plain data. It lives in W; P can only pass it back to W as
    an argument. Comparisons and truth tests of it fail (nothing it says is believed)."""

    __slots__ = ("ref", "worker")

    def __init__(self, ref: int, worker: "_Worker") -> None:
        self.ref, self.worker = ref, worker

    def __repr__(self) -> str:
        return f"<sandboxed object #{self.ref}>"

    def _refuse(self, *_: object) -> bool:
        raise StrictComparisonError("an object of the candidate's process cannot be compared "
                                    "or tested for truth")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = _refuse
    __hash__ = object.__hash__


class _RemoteIterator(_Remote):
    """A builtin iterator (generator, map, zip ...) of W: each next() asks W for one item."""

    __slots__ = ("guarded",)

    def __init__(self, ref: int, worker: "_Worker", guarded: bool) -> None:
        super().__init__(ref, worker)
        self.guarded = guarded

    def __iter__(self) -> "_RemoteIterator":
        return self

    def __next__(self) -> object:
        return self.worker.request("next", self.ref, (), {}, self.guarded)


class _Worker:
    """P's end of the two pipes to W. Reads are bounded and never block past W's death."""

    def __init__(self, pid: int, req_w: int, rep_r: int) -> None:
        self.pid, self.req_w, self.rep_r = pid, req_w, rep_r
        self.buf, self.exited = bytearray(), False
        self.dead = ""  # why W is unusable, once it is
        self.proxies: dict = {}  # id(proxy function) -> (name, proxy function)
        posix.set_blocking(req_w, False)  # a W that stops reading must not block P forever

    def _gone_after_wait(self) -> bool:
        """After an idle wait: True once W is known dead (a descendant may still hold the pipe,
        so EOF alone is not enough). One more round drains what W wrote before dying."""
        if self.exited:
            return True
        if posix.waitpid(self.pid, posix.WNOHANG)[0]:
            self.exited = True
        return False

    def send(self, payload: bytes) -> None:
        view = memoryview(_frame(payload))
        while view:
            try:  # write first: a wait (select) only when the pipe is full
                view = view[posix.write(self.req_w, view):]
                continue
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: nobody reads any more
                raise _WorkerGone("the candidate's process closed its end") from None
            if not select.select([], [self.req_w], [], 0.05)[1] and self._gone_after_wait():
                raise _WorkerGone("the candidate's process died")

    def recv(self) -> bytes:
        buf = self.buf
        while True:
            if len(buf) >= 8:
                size = int.from_bytes(buf[:8], "little")
                if size > _MAX_MSG:
                    raise _WorkerGone("the candidate's process sent a frame over the size cap")
                if len(buf) >= 8 + size:
                    payload = bytes(buf[8:8 + size])
                    del buf[:8 + size]
                    return payload
            ready, _, _ = select.select([self.rep_r], [], [], 0.05)
            if ready:
                chunk = posix.read(self.rep_r, 1 << 20)
                if not chunk:
                    raise _WorkerGone("the candidate's process died")
                buf.extend(chunk)
            elif self._gone_after_wait():
                raise _WorkerGone("the candidate's process died")

    # ----- calls ---------------------------------------------------------------------------------
    def proxy(self, name: str, guarded: bool):
        """A P function standing for W's callable `name`."""
        def call(*args: object, **kwargs: object) -> object:
            return self.request("call", name, args, kwargs, guarded)

        call.__name__ = call.__qualname__ = name
        self.proxies[id(call)] = (name, call)
        return call

    def _ref_out(self, v: object) -> bytes:
        """How a non-plain argument crosses: handles and proxies by reference, nothing else."""
        if type(v) in (_Remote, _RemoteIterator) and v.worker is self:
            return b"h" + _encode(v.ref, None)
        named = self.proxies.get(id(v))
        if named is not None and named[1] is v:
            return b"n" + _encode(named[0], None)
        raise TypeError(f"an argument of type {type(v).__qualname__!s:.80} cannot be passed to "
                        "the candidate's code (only plain data, its own objects and functions)")

    def ref_in(self, tag: bytes, key: object) -> object:
        if tag == b"h" and type(key) is int:
            return _Remote(key, self)
        raise _Garbled("bad reference")

    @staticmethod
    def _refuse_ref(tag: bytes, key: object) -> object:
        raise StrictComparisonError("non-builtin value returned by the function under test")

    def request(self, op: str, target: object, args: tuple, kwargs: dict,
                guarded: bool) -> object:
        """One call (or next()) in W; its result as P values, or its exception raised here."""
        if self.dead:
            raise _WorkerGone(self.dead)
        try:
            message = _encode((op, target, args, kwargs, guarded), self._ref_out)
        except _NotPlain as e:
            raise TypeError(f"argument {e.args[0]}") from None
        try:
            self.send(message)
            raw = self.recv()
        except _WorkerGone as e:
            self.dead = f"{e}" or "the candidate's process died"
            raise
        try:
            reply = _decode(raw, None)
            kind = reply[0] if type(reply) is tuple and reply else None
            if kind == "ok" and len(reply) == 2 and type(reply[1]) is bytes:
                return _decode(reply[1], self._refuse_ref if guarded else self.ref_in)
        except _Garbled:
            raise CandidateError("the candidate's process sent a malformed reply") from None
        if kind == "iter" and len(reply) == 2 and type(reply[1]) is int:
            return _RemoteIterator(reply[1], self, guarded)
        if kind == "notplain" and len(reply) == 2 and type(reply[1]) is str:
            raise StrictComparisonError(f"non-builtin value of type {reply[1]:.80}")
        if kind == "exc" and len(reply) == 3 and type(reply[1]) is type(reply[2]) is str:
            raise _exception(reply[1], reply[2])
        raise CandidateError("the candidate's process sent a malformed reply")


def _exception(name: str, text: str) -> BaseException:
    """The candidate's exception rebuilt in P: its nearest builtin type, or CandidateError."""
    cls = _BUILTIN_EXCEPTIONS.get(name)
    text = text[:_MAX_REASON]
    if cls is not None:
        try:
            return cls(text)
        except BaseException:  # e.g. UnicodeDecodeError wants five arguments
            pass
    return CandidateError(f"{name or 'exception of a non-builtin type'}: {text}"[:_MAX_REASON])


def _trusted_module(name: str) -> object:
    """P's own copy of the stdlib module `name`, or None (refused or not importable)."""
    parts = name.split(".")
    if parts[0] in _NO_IMPORT or not all(p.isidentifier() and not p.startswith("__")
                                         for p in parts):
        return None
    try:
        __import__(name)
        return sys.modules.get(name)
    except BaseException:  # not importable here: the name is just absent, as if undefined
        return None


def _test_names(code: object) -> set:
    """Every name the test's code (nested functions and comprehensions included) refers to."""
    names, todo = set(), [code]
    while todo:
        c = todo.pop()
        names.update(c.co_names)
        todo.extend(k for k in c.co_consts if type(k) is type(c))
    return names


def _bindings(worker: _Worker, inventory: object, guard: frozenset) -> dict:
    """The test scope's names from W's report; see the module docstring for the rules."""
    bound: dict = {}
    for item in inventory if type(inventory) is list else ():
        if type(item) is not tuple or len(item) != 3 or type(item[0]) is not str:
            continue
        name, kind, payload = item
        if (not name.isidentifier() or name.startswith("__")
                or (name in _CLEAN_BUILTINS and name not in guard)):
            continue  # a candidate `abs` or `set` never replaces the builtin the test means
        if kind == "module" and type(payload) is str:
            module = _trusted_module(payload)
            if module is not None:
                bound[name] = module
        elif kind == "callable":
            bound[name] = worker.proxy(name, name in guard)
        elif kind == "value" and type(payload) is bytes:
            try:
                bound[name] = _decode(payload, worker.ref_in)
            except _Garbled:
                pass
    return bound


def _run_tests(worker: _Worker, code: str, tests: list, guard: frozenset) -> "tuple[list, bool]":
    """[(passed, reason)] per test, and whether every test was judged."""
    def fail_all(why: str) -> "tuple[list, bool]":
        return [(False, why)] * len(tests), False

    try:
        worker.send(_encode(code, None))  # W runs the candidate while P compiles the tests
    except _WorkerGone:
        return fail_all("worker died before the candidate ran")
    compiled: list = []
    names: set = set()
    for i, src in enumerate(tests):
        try:
            compiled.append(compile(src, f"<test {i}>", "exec"))
            names |= _test_names(compiled[-1])
        except BaseException as e:
            compiled.append(e)
    try:
        worker.send(_encode(sorted(names), None))
        reply = _decode(worker.recv(), None)
    except (_WorkerGone, _Garbled):
        return fail_all("worker died while loading the candidate")
    if type(reply) is not tuple or len(reply) != 2 or reply[0] not in ("loaded", "failed"):
        return fail_all("malformed report from the candidate's process")
    if reply[0] == "failed":
        return fail_all(reply[1][:_MAX_REASON] if type(reply[1]) is str else "candidate failed")
    bound = _bindings(worker, reply[1], guard)
    results = []
    for c in compiled:
        if worker.dead:
            results.append((False, f"during an earlier test: {worker.dead}"))
            continue
        if isinstance(c, BaseException):
            results.append((False, _describe(c)))
            continue
        scope = dict(bound)
        scope.update(__builtins__=dict(_CLEAN_BUILTINS), __name__="__test__",
                     __bgpo_cmp__=_strict_cmp, __bgpo_truth__=_strict_truth)
        try:
            exec(c, scope)
            why = ""
        except BaseException as e:
            why = _describe(e)
        if worker.dead:  # even if the test swallowed the error: W's death fails it
            why = worker.dead
        results.append((not why, why))
    return results, not worker.dead


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
    req_r, req_w = posix.pipe()
    rep_r, rep_w = posix.pipe()
    pid = posix.fork()
    if pid == 0:
        posix.close(req_w)
        posix.close(rep_r)
        _worker(req_r, rep_w)
    posix.close(req_r)
    posix.close(rep_w)
    job = marshal.loads(_read_to_eof(0))  # from the host verifier, which is trusted
    devnull = posix.open("/dev/null", posix.O_RDWR)
    posix.dup2(devnull, 0)
    verdict = posix.dup(1)  # the only way to the host's stdout from now on
    posix.dup2(devnull, 1)  # what tests print, or modules write at import, goes nowhere
    _make_undumpable()
    nonce, tests = str(job["nonce"]), [str(t) for t in job["tests"]]
    _write_all(verdict, f"{nonce} ready\n".encode())
    worker = _Worker(pid, req_w, rep_r)
    results, complete = _run_tests(worker, str(job["code"]), tests,
                                   frozenset(str(g) for g in job.get("guard", ())))
    lines = []
    for i, (ok, why) in enumerate(results):
        if ok:
            lines.append(f"{nonce} result {i} pass\n")
        else:
            lines.append(f"{nonce} result {i} fail "
                         f"{why[:_MAX_REASON].encode('utf-8', 'replace').hex()}\n")
    if complete:
        lines.append(f"{nonce} done {len(tests)}\n")
    _write_all(verdict, "".join(lines).encode())
    if not worker.exited:  # (once reaped, its pid may belong to someone else)
        try:
            posix.kill(pid, 9)  # unsandboxed runs have no pid namespace to take W down with us
        except OSError:
            pass
    posix._exit(0)  # as pid 1 our exit makes the kernel kill whatever W left behind


if __name__ == "__main__":
    main()
