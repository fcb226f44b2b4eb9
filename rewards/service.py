"""HTTP verification service: score completions over HTTP with a bearer token.

`create_app(token)` builds a FastAPI app around one VerifierWorker per preset:
- `POST /v1/score`  body `{"requests": [{"task", "completion", "item"}], "preset": optional}`;
  answers `{"results": [RewardResult...]}` in request order. A client that disconnects while
  its batch is scored cancels it: its items that have not started are dropped.
- `GET /healthz`    liveness (no token: probes need none, and it reveals no data; no body).
- `GET /metrics`    Prometheus text from the app's own CollectorRegistry (token required).
In front of the app, `rewards.http_limits.RequestGuard` decides from the headers alone, before
any body byte is read: 401/403 without the right `Authorization: Bearer <token>` (every path but
`/healthz`), 411 for a body without Content-Length, 413 for one over `max_body_bytes` (or any
body to `/healthz`), 503 when admitted bodies would hold more than `max_inflight_body_bytes`;
then it reads the body within `body_idle_s` per chunk and `body_timeout_s` in all (else 408).
A batch over `max_batch` or a completion over `max_completion_chars` is 413, a malformed body
422 with the offending field in the message.

`make_server()` puts it under uvicorn with the connection limits (`max_connections`: 503 past
it; a deadline for each request head; keep-alive and header-size limits); `serve()` runs that
until SIGTERM or Ctrl-C and returns normally, so the process exits through interpreter shutdown
and the atexit cleanups run (staged harness folder, isolation children, prestarted sandboxes).
`main(argv)` is the `bgpo serve-rewards` subcommand; it exits 0 after a SIGTERM. The service
refuses to start without a token. It does not do TLS: bind to loopback or put it behind a proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from rewards import PRESETS
from rewards.http_limits import OPEN_PATH, HeadTimeoutH11Protocol, RequestGuard, check_limits
from rewards.tasks import canonical_name
from rewards.types import ScoringOptions
from rewards.verifier import VerifierWorker

TOKEN_ENV = "BGPO_REWARDS_TOKEN"
DISCONNECT_POLL_S = 0.25  # how often a scoring request checks that its client is still there
MiB = 1 << 20


class ScoreItem(BaseModel):
    """One completion to score."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="task name, e.g. gsm8k, math, countdown, sudoku, humaneval, mbpp")
    completion: str = Field(description="the policy's completion text")
    item: dict[str, Any] = Field(description="the dataset row (prompt, reward_model, extra_info)")

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return canonical_name(value)  # ValueError naming the task -> 422


class ScoreRequest(BaseModel):
    """A batch of completions."""

    model_config = ConfigDict(extra="forbid")
    requests: list[ScoreItem] = Field(description="completions to score, any tasks mixed")
    preset: str | None = Field(default=None, description="reward preset; the server's default if unset")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known presets: {', '.join(PRESETS)}")
        return value


class ScoreResult(BaseModel):
    """RewardResult as JSON."""

    score: float
    status: str
    detail: str
    seconds: float
    extra: dict[str, Any]


class ScoreResponse(BaseModel):
    results: list[ScoreResult]


class _AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a row's text may hold lone surrogates, which the default
    UTF-8 rendering cannot encode (a 500); `\\udXXX` escapes are valid JSON."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def _field_name(error: dict) -> str:
    """Dotted field path of a validation error ("requests.0.task"); "body" for unparsable JSON."""
    if error.get("type") == "json_invalid":
        return "body"
    return ".".join(str(p) for p in error["loc"] if p != "body") or "body"


def _path_label(path: str) -> str:
    # Bounded label values: unknown paths share one series instead of one per probe URL.
    return path if path in ("/v1/score", "/healthz", "/metrics") else "other"


def create_app(token: str, *, preset: str = "bgpo", max_batch: int = 1024,
               max_completion_chars: int = 100_000, max_body_bytes: int = 64 * MiB,
               max_inflight_body_bytes: int = 256 * MiB, body_timeout_s: float = 30.0,
               body_idle_s: float = 10.0, max_concurrency: int = 2,
               options: ScoringOptions | None = None) -> FastAPI:
    """The verification app behind its RequestGuard (see the module docstring for the limits).
    `token` must be non-empty."""
    if not token:
        raise ValueError("the rewards service needs a non-empty bearer token")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    check_limits(max_body_bytes, max_inflight_body_bytes, body_timeout_s, body_idle_s)
    options = options or ScoringOptions()
    registry = CollectorRegistry()
    items_total = Counter("bgpo_reward_items", "Scored completions", ["task", "status"],
                          registry=registry)
    item_seconds = Histogram("bgpo_reward_item_seconds", "Seconds to score one completion",
                             ["task"], registry=registry,
                             buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 30))
    queue_seconds = Histogram("bgpo_reward_queue_seconds", "Seconds a completion waited for a "
                              "verifier slot before it started", ["task"], registry=registry,
                              buckets=(0.001, 0.01, 0.1, 1, 5, 15, 60, 300))
    requests_total = Counter("bgpo_reward_http_requests", "HTTP requests", ["path", "code"],
                             registry=registry)
    pool_alive = Gauge("bgpo_reward_isolation_idle_alive", "Idle isolation children alive",
                       registry=registry)
    workers: dict[str, VerifierWorker] = {}

    def worker_for(name: str) -> VerifierWorker:
        if name not in workers:  # a dict insert is atomic; a rare duplicate worker is harmless
            workers[name] = VerifierWorker(f"service-{name}", preset=name,
                                           max_concurrency=max_concurrency, options=options)
        return workers[name]

    worker_for(preset)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        for worker in list(workers.values()):  # queued items are dropped, running ones finish
            worker.close()

    app = FastAPI(title="bgpo rewards", version="1", default_response_class=_AsciiJSONResponse,
                  lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field_name(e), "msg": e["msg"]} for e in exc.errors()[:20]]
        message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:5])
        return _AsciiJSONResponse(status_code=422, content={"detail": message, "errors": errors})

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score_batch(body: ScoreRequest, request: Request) -> ScoreResponse:
        if len(body.requests) > max_batch:
            raise HTTPException(413, f"batch of {len(body.requests)} over max_batch={max_batch}")
        for i, req in enumerate(body.requests):
            if len(req.completion) > max_completion_chars:
                raise HTTPException(413, f"requests.{i}.completion: over {max_completion_chars} chars")
        # Scoring runs in a worker thread; this coroutine watches the connection meanwhile. A
        # client that disconnects gives up its items: those not started are dropped, so they
        # do not take verifier slots from other clients (rewards/scheduler.py).
        cancel = threading.Event()
        work = asyncio.ensure_future(run_in_threadpool(
            lambda: worker_for(body.preset or preset).score_batch(
                [r.model_dump() for r in body.requests], cancel=cancel)))
        while not work.done():
            await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if not work.done() and not cancel.is_set() and await request.is_disconnected():
                cancel.set()
        try:
            results = work.result()
        except ValueError as exc:  # e.g. a task without this preset: the caller's mistake
            raise HTTPException(422, str(exc)) from exc
        for req, result in zip(body.requests, results, strict=True):
            items_total.labels(task=req.task, status=result.status).inc()
            item_seconds.labels(task=req.task).observe(result.seconds)
            queue_seconds.labels(task=req.task).observe(result.extra.get("queue_s", 0.0))
        return ScoreResponse(results=[ScoreResult(**r.to_dict()) for r in results])

    @app.get(OPEN_PATH)
    def healthz() -> dict:
        health = worker_for(preset).health()
        return {"ok": health["ok"], "sandbox_available": health["sandbox"]["available"]}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        pool = worker_for(preset).health()["pool"]
        pool_alive.set(pool["idle_alive"])
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def on_status(path: str, code: int) -> None:
        requests_total.labels(path=_path_label(path), code=str(code)).inc()

    app.add_middleware(RequestGuard, token=token, max_body_bytes=max_body_bytes,
                       max_inflight_body_bytes=max_inflight_body_bytes,
                       body_timeout_s=body_timeout_s, body_idle_s=body_idle_s, on_status=on_status)
    return app


def resolve_token(token: str | None = None, token_file: str | None = None) -> str:
    """The token from the argument, else the file, else $BGPO_REWARDS_TOKEN; ValueError if none."""
    if not token and token_file:
        with open(token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    token = token or os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(f"no token: pass --token-file or set {TOKEN_ENV}; refusing to start")
    return token


def make_server(app, host: str = "127.0.0.1", port: int = 8000, *, max_connections: int = 64,
                keep_alive_s: int = 5, head_timeout_s: float = 10.0,
                max_header_bytes: int = 16 * 1024, shutdown_timeout_s: int = 30,
                log_level: str = "info"):
    """A uvicorn.Server for `app` with the connection limits.

    max_connections: open connections served at once; a request on one more is answered 503
      (uvicorn's limit_concurrency counts the new connection itself, hence the +1).
    keep_alive_s: an idle connection between requests is closed after this.
    head_timeout_s: each request's line and headers must arrive within this (HeadTimeoutH11Protocol).
    max_header_bytes: h11's cap on a request head; larger is 400.
    shutdown_timeout_s: on SIGTERM, requests still running after this are cancelled.
    """
    import uvicorn  # noqa: PLC0415 - only the server needs it

    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on",
        http=HeadTimeoutH11Protocol.with_head_timeout(head_timeout_s),  # h11: its limits hold
        ws="none", limit_concurrency=max_connections + 1, timeout_keep_alive=keep_alive_s,
        h11_max_incomplete_event_size=max_header_bytes,
        timeout_graceful_shutdown=shutdown_timeout_s)
    return uvicorn.Server(config)


SERVER_KWARGS = ("max_connections", "keep_alive_s", "head_timeout_s", "max_header_bytes",
                 "shutdown_timeout_s")


def serve(host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **kwargs) -> None:
    """Run the service under uvicorn until SIGTERM or Ctrl-C, then return.

    `kwargs` are make_server's limits (SERVER_KWARGS) and create_app's keywords. After a graceful
    shutdown uvicorn re-raises the signal it caught, to die of it; under the default SIGTERM
    action that kills the process before atexit runs, which left the staged harness folder
    behind. So the handlers that uvicorn restores and re-raises into are ours: they only ask
    the server to stop, and serve() returns normally.
    """
    server_kwargs = {k: kwargs.pop(k) for k in SERVER_KWARGS if k in kwargs}
    state: dict = {}

    def stop(signum, frame) -> None:  # before uvicorn starts, or its re-raise after it stopped
        state["stop"] = True
        if "server" in state:
            state["server"].should_exit = True

    handled = (signal.SIGTERM, signal.SIGINT)
    on_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop) for sig in handled} if on_main else {}
    try:
        server = make_server(create_app(resolve_token(token), **kwargs), host, port,
                             **server_kwargs)
        state["server"] = server
        if not state.get("stop"):
            server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_serve_rewards_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of `bgpo serve-rewards`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token-file", default=None,
                        help=f"file holding the bearer token (else ${TOKEN_ENV})")
    parser.add_argument("--preset", default="bgpo", choices=PRESETS)
    parser.add_argument("--max-concurrency", type=int, default=2, help="completions scored at once")
    parser.add_argument("--max-batch", type=int, default=1024, help="completions per request")
    parser.add_argument("--max-completion-chars", type=int, default=100_000)
    parser.add_argument("--deadline-s", type=float, default=10.0, help="per-completion deadline")
    limits = parser.add_argument_group("limits on clients (see rewards.http_limits)")
    limits.add_argument("--max-body-bytes", type=int, default=64 * MiB,
                        help="largest request body (413 past it)")
    limits.add_argument("--max-inflight-body-bytes", type=int, default=256 * MiB,
                        help="bytes of bodies admitted at once, all connections (503 past it)")
    limits.add_argument("--body-timeout-s", type=float, default=30.0,
                        help="time to send a whole body (408 past it)")
    limits.add_argument("--body-idle-s", type=float, default=10.0,
                        help="longest pause between body chunks (408 past it)")
    limits.add_argument("--max-connections", type=int, default=64,
                        help="open connections served at once (503 past it)")
    limits.add_argument("--head-timeout-s", type=float, default=10.0,
                        help="time to send a request line and headers (connection closed past it)")
    limits.add_argument("--keep-alive-s", type=int, default=5, help="seconds an idle keep-alive connection stays open")
    return parser


def run_serve_rewards(args: argparse.Namespace) -> int:
    """Entry point for parsed `serve-rewards` arguments; returns the exit status: 0 after a
    SIGTERM or Ctrl-C (the shutdown was asked for and completed), 2 for a bad setting."""
    try:
        token = resolve_token(token_file=args.token_file)
    except (ValueError, OSError) as exc:
        print(f"bgpo serve-rewards: {exc}", file=sys.stderr)
        return 2
    try:
        serve(args.host, args.port, token, preset=args.preset, max_batch=args.max_batch,
              max_completion_chars=args.max_completion_chars,
              max_concurrency=args.max_concurrency,
              options=ScoringOptions(deadline_s=args.deadline_s),
              max_body_bytes=args.max_body_bytes,
              max_inflight_body_bytes=args.max_inflight_body_bytes,
              body_timeout_s=args.body_timeout_s, body_idle_s=args.body_idle_s,
              max_connections=args.max_connections, head_timeout_s=args.head_timeout_s,
              keep_alive_s=args.keep_alive_s)
    except ValueError as exc:  # a limit that makes no sense, raised before the server starts
        print(f"bgpo serve-rewards: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_serve_rewards_args(argparse.ArgumentParser(
        prog="bgpo serve-rewards", formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    return run_serve_rewards(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
