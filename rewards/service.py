"""HTTP verification service: score completions over HTTP with a bearer token.

`create_app(token)` builds a FastAPI app around one VerifierWorker per preset:
- `POST /v1/score`  body `{"requests": [{"task", "completion", "item"}], "preset": optional}`;
  answers `{"results": [RewardResult...]}` in request order.
- `GET /healthz`    liveness (no token: probes need none, and it reveals no data).
- `GET /metrics`    Prometheus text from the app's own CollectorRegistry (token required).
Every other path needs `Authorization: Bearer <token>`: 401 without one, 403 with a wrong one
(constant-time compare). Sizes are capped: 413 for a body over `max_body_bytes` (checked while
it streams in, before parsing), a batch over `max_batch`, or a completion over
`max_completion_chars`. A malformed body is 422 with the offending field in the message.

`serve()` runs it under uvicorn; `main(argv)` is the `bgpo serve-rewards` subcommand. The service
refuses to start without a token. It does not do TLS: bind to loopback or put it behind a proxy.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
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

from rewards import PRESETS
from rewards.tasks import canonical_name
from rewards.types import ScoringOptions
from rewards.verifier import VerifierWorker

TOKEN_ENV = "BGPO_REWARDS_TOKEN"
OPEN_PATHS = frozenset({"/healthz"})


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


class _Guard:
    """ASGI middleware: bearer token, then a streaming body-size cap, before FastAPI parses."""

    def __init__(self, app, token: str, max_body_bytes: int, requests_total: Counter) -> None:
        self.app, self.token = app, token.encode()
        self.max_body_bytes, self.requests_total = max_body_bytes, requests_total

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path not in OPEN_PATHS:
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"")
            if not auth.lower().startswith(b"bearer "):
                return await self._reject(send, path, 401, "missing bearer token")
            if not hmac.compare_digest(auth[7:].strip(), self.token):
                return await self._reject(send, path, 403, "wrong token")
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                return await self._reject(send, path, 413, f"body over {self.max_body_bytes} bytes")
        # Read the whole body here, counting as it streams (chunked uploads carry no
        # Content-Length), so an oversize body is refused before anything parses it. FastAPI
        # would buffer it anyway; an exception raised inside its body read would become a 400.
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_body_bytes:
                return await self._reject(send, path, 413, f"body over {self.max_body_bytes} bytes")
            more = message.get("more_body", False)
        replayed = False

        async def replay_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.requests_total.labels(path=_path_label(path), code=str(message["status"])).inc()
            await send(message)

        await self.app(scope, replay_receive, counting_send)

    async def _reject(self, send, path: str, code: int, detail: str) -> None:
        self.requests_total.labels(path=_path_label(path), code=str(code)).inc()
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if code == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


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
               max_completion_chars: int = 100_000, max_body_bytes: int = 64 << 20,
               max_concurrency: int = 2, options: ScoringOptions | None = None) -> FastAPI:
    """The verification app. `token` must be non-empty."""
    if not token:
        raise ValueError("the rewards service needs a non-empty bearer token")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
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
    app = FastAPI(title="bgpo rewards", version="1", default_response_class=_AsciiJSONResponse)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field_name(e), "msg": e["msg"]} for e in exc.errors()[:20]]
        message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:5])
        return _AsciiJSONResponse(status_code=422, content={"detail": message, "errors": errors})

    @app.post("/v1/score", response_model=ScoreResponse)
    def score_batch(body: ScoreRequest) -> ScoreResponse:
        if len(body.requests) > max_batch:
            raise HTTPException(413, f"batch of {len(body.requests)} over max_batch={max_batch}")
        for i, req in enumerate(body.requests):
            if len(req.completion) > max_completion_chars:
                raise HTTPException(413, f"requests.{i}.completion: over {max_completion_chars} chars")
        worker = worker_for(body.preset or preset)
        try:
            results = worker.score_batch([r.model_dump() for r in body.requests])
        except ValueError as exc:  # e.g. a task without this preset: the caller's mistake
            raise HTTPException(422, str(exc)) from exc
        for req, result in zip(body.requests, results, strict=True):
            items_total.labels(task=req.task, status=result.status).inc()
            item_seconds.labels(task=req.task).observe(result.seconds)
            queue_seconds.labels(task=req.task).observe(result.extra.get("queue_s", 0.0))
        return ScoreResponse(results=[ScoreResult(**r.to_dict()) for r in results])

    @app.get("/healthz")
    def healthz() -> dict:
        health = worker_for(preset).health()
        return {"ok": health["ok"], "sandbox_available": health["sandbox"]["available"]}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        pool = worker_for(preset).health()["pool"]
        pool_alive.set(pool["idle_alive"])
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Guard, token=token, max_body_bytes=max_body_bytes,
                       requests_total=requests_total)
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


def serve(host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **app_kwargs) -> None:
    """Run the service under uvicorn until interrupted."""
    import uvicorn  # noqa: PLC0415 - only the server needs it

    uvicorn.run(create_app(resolve_token(token), **app_kwargs), host=host, port=port,
                log_level="info")


def add_serve_rewards_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of `bgpo serve-rewards`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token-file", default=None,
                        help=f"file holding the bearer token (else ${TOKEN_ENV})")
    parser.add_argument("--preset", default="bgpo", choices=PRESETS)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--deadline-s", type=float, default=10.0, help="per-completion deadline")
    return parser


def run_serve_rewards(args: argparse.Namespace) -> int:
    """Entry point for parsed `serve-rewards` arguments; returns the exit status."""
    try:
        token = resolve_token(token_file=args.token_file)
    except (ValueError, OSError) as exc:
        print(f"bgpo serve-rewards: {exc}", file=sys.stderr)
        return 2
    serve(args.host, args.port, token, preset=args.preset, max_batch=args.max_batch,
          max_concurrency=args.max_concurrency, options=ScoringOptions(deadline_s=args.deadline_s))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_serve_rewards_args(argparse.ArgumentParser(prog="bgpo serve-rewards"))
    return run_serve_rewards(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
