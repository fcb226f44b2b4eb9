"""What the rewards service refuses before it reads a body, and the limits on its connections.

`RequestGuard` is a pure ASGI layer (no BaseHTTPMiddleware, which buffers) in front of the app.
For every HTTP request, in this order and before one body byte is read:
1. `/healthz` is the only open route, and it takes no body: a Content-Length over 0 or any
   Transfer-Encoding is 413. Every other path needs `Authorization: Bearer <token>`: 401
   without one, 403 with a wrong one (hmac.compare_digest; only the token's length can leak).
2. A body must declare its size: Transfer-Encoding (chunked) is 411. We chose 411 over
   streaming with a cap so that every size decision is made from the headers alone.
3. Content-Length over `max_body_bytes` is 413. A Content-Length that would take the bytes
   reserved by bodies still being read past `max_inflight_body_bytes` is 503: the sum of the
   bodies this process holds has a hard bound, however many connections are open.
Only then is the body read, with a deadline: `body_idle_s` between chunks and `body_timeout_s`
for the whole body. A client that stalls is answered 408; its connection is closed and its
buffer dropped. Every refusal carries `Connection: close`, so uvicorn closes the connection
instead of draining the unread body. Note that a client still sending when the refusal comes
may see a reset instead of the answer (the kernel resets a socket closed with unread data);
a client that sends `Expect: 100-continue` never sends the body at all.

`HeadTimeoutH11Protocol` is uvicorn's h11 protocol plus a deadline for each request's head
(request line and headers), counted from when the connection opens or its previous response
ends; a connection that has not sent a whole head by then is closed. Without it a client that
opens connections and sends nothing, or one header byte a second, holds connection slots
forever (uvicorn's keep-alive timer only starts after a first response). The head's size is
capped by h11 (`h11_max_incomplete_event_size`), the number of served connections by uvicorn's
`limit_concurrency` (503 past it); `rewards.service.make_server` wires these together.

Memory per connection before the app sees a request: the head, at most h11's cap; and of a
body, what uvicorn reads ahead before it pauses the socket (64 KiB, plus one read of at most
256 KiB). Refusals and uvicorn's own 503s never read further.

Not defended here: TLS, rate limits per client, and memory the app itself uses to parse an
admitted body (JSON objects take several times the body's bytes; `max_body_bytes` bounds it).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable

from uvicorn.protocols.http.h11_impl import H11Protocol

OPEN_PATH = "/healthz"


def check_limits(max_body_bytes: int, max_inflight_body_bytes: int, body_timeout_s: float,
                 body_idle_s: float) -> None:
    """ValueError naming the first limit that makes no sense."""
    if max_body_bytes < 0 or max_inflight_body_bytes < max_body_bytes:
        raise ValueError(f"need 0 <= max_body_bytes ({max_body_bytes}) <= "
                         f"max_inflight_body_bytes ({max_inflight_body_bytes})")
    if body_timeout_s <= 0 or body_idle_s <= 0:
        raise ValueError(f"body timeouts must be > 0, got total={body_timeout_s} "
                         f"idle={body_idle_s}")


class RequestGuard:
    """ASGI layer: auth and size checks from the headers, then a bounded, timed body read."""

    def __init__(self, app, *, token: str, max_body_bytes: int, max_inflight_body_bytes: int,
                 body_timeout_s: float, body_idle_s: float,
                 on_status: Callable[[str, int], None] = lambda path, code: None) -> None:
        if not token:
            raise ValueError("RequestGuard needs a non-empty bearer token")
        check_limits(max_body_bytes, max_inflight_body_bytes, body_timeout_s, body_idle_s)
        self.app, self.token = app, token.encode()
        self.max_body_bytes, self.max_inflight = max_body_bytes, max_inflight_body_bytes
        self.body_timeout_s, self.body_idle_s = body_timeout_s, body_idle_s
        self.on_status = on_status  # (path, status) of every response, for metrics
        self.inflight = 0  # bytes reserved by bodies being read or held; one event loop, no lock

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # websockets: nothing here speaks them
            return await send({"type": "websocket.close", "code": 1008})
        path = scope["path"]
        refusal, length = self._check_headers(path, scope["headers"])
        if refusal is not None:
            return await self._refuse(send, path, *refusal)
        if self.inflight + length > self.max_inflight:
            return await self._refuse(send, path, 503, f"server busy: {self.inflight} bytes of "
                                      f"request bodies in flight (limit {self.max_inflight})")
        self.inflight += length  # reserved before the first byte is read
        try:
            body = await self._read_body(receive, length)
            if isinstance(body, tuple):
                return await self._refuse(send, path, *body)
            if body is None:
                return  # the client went away
            await self.app(scope, _replay(body, receive), self._counting(send, path))
        finally:
            self.inflight -= length

    def _check_headers(self, path: str, headers) -> tuple[tuple[int, str] | None, int]:
        """(refusal, declared length): the refusal as (status, detail), None if admitted."""
        auth, lengths, chunked = [], set(), False
        for name, value in headers:
            if name == b"authorization":
                auth.append(value)
            elif name == b"content-length":
                lengths.add(value.strip())
            elif name == b"transfer-encoding":
                chunked = True
        if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
            return (400, "one Content-Length of decimal digits, please"), 0
        length = int(next(iter(lengths), b"0"))
        if path == OPEN_PATH:
            if length or chunked:
                return (413, f"{OPEN_PATH} takes no body"), 0
            return None, 0
        if len(auth) != 1 or auth[0][:7].lower() != b"bearer ":
            return (401, "missing bearer token"), 0
        if not hmac.compare_digest(auth[0][7:].strip(), self.token):
            return (403, "wrong token"), 0
        if chunked:
            return (411, "send the body with a Content-Length (chunked bodies are refused)"), 0
        if length > self.max_body_bytes:
            return (413, f"body of {length} bytes over {self.max_body_bytes}"), 0
        return None, length

    async def _read_body(self, receive, length: int) -> bytes | tuple[int, str] | None:
        """The whole body; (408, why) past a timeout; None if the client disconnected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks, seen = [], 0
        while True:
            wait = min(self.body_idle_s, deadline - loop.time())
            try:
                if wait <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except (TimeoutError, asyncio.TimeoutError):
                return 408, (f"body not received in time ({seen} of {length} bytes; limits: "
                             f"{self.body_idle_s:g}s idle, {self.body_timeout_s:g}s total)")
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > length:  # h11 never delivers more than Content-Length; another server might
                return 413, f"body longer than its Content-Length of {length}"
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _counting(self, send, path: str):
        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.on_status(path, message["status"])
            await send(message)
        return counting_send

    async def _refuse(self, send, path: str, code: int, detail: str) -> None:
        self.on_status(path, code)
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        if code == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive):
    """A receive() that yields the body already read, then defers to the server's (disconnect)."""
    sent = False

    async def replay_receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay_receive


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a connection must send each request head within
    `head_timeout_s` (a class attribute: see `with_head_timeout`) or it is closed.

    Hooks used: connection_made, handle_events (a new `cycle` means a head arrived),
    on_response_complete (the next head is due) and connection_lost.
    """

    head_timeout_s = 10.0

    @classmethod
    def with_head_timeout(cls, seconds: float) -> type[HeadTimeoutH11Protocol]:
        if seconds <= 0:
            raise ValueError(f"head timeout must be > 0, got {seconds}")
        return type(cls.__name__, (cls,), {"head_timeout_s": float(seconds)})

    def connection_made(self, transport) -> None:
        self._head_timer = None
        super().connection_made(transport)
        self._arm_head_timer()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole head arrived and its request started
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        self._arm_head_timer()  # before super(): it may start a pipelined request at once
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
