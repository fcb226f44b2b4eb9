"""The verification service, started for real under uvicorn on a free loopback port.

The first tests run the app in a thread of this process; the hostile-client tests at the end
run `bgpo serve-rewards` as its own process (own TMPDIR, RSS read from /proc) and talk to it
over raw sockets, so a client can send half a request and stall.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from rewards.service import create_app, main, make_server, resolve_token

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "rewards"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def row(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.jsonl").read_text().splitlines()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url():
    port = free_port()
    app = create_app(TOKEN, max_batch=4, max_completion_chars=1000, max_body_bytes=20_000)
    server = make_server(app, "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def gsm_request(completion: str = "so \\boxed{18}") -> dict:
    return {"task": "gsm8k", "completion": completion, "item": row("gsm8k")}


def test_auth(base_url):
    body = {"requests": [gsm_request()]}
    no_token = httpx.post(f"{base_url}/v1/score", json=body)
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{base_url}/v1/score", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert httpx.get(f"{base_url}/metrics").status_code == 401
    assert httpx.get(f"{base_url}/healthz").json()["ok"] is True


def test_score_batch(base_url):
    sudoku = row("sudoku")
    body = {"requests": [
        gsm_request(), gsm_request("no box"),
        {"task": "sudoku", "item": sudoku,
         "completion": f"<answer>{sudoku['reward_model']['ground_truth']}</answer>"},
    ]}
    response = httpx.post(f"{base_url}/v1/score", json=body, headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["score"], r["status"]) for r in results] == [(1.0, "ok"), (0.0, "no_answer"),
                                                            (1.0, "ok")]
    d1 = httpx.post(f"{base_url}/v1/score", json={**body, "preset": "d1"}, headers=AUTH)
    # d1 has no "no answer": without <answer> tags the whole completion is the answer.
    first = d1.json()["results"][0]
    assert d1.status_code == 200 and (first["status"], first["score"]) == ("wrong", 0.0)


def test_size_caps(base_url):
    too_long = httpx.post(f"{base_url}/v1/score", headers=AUTH,
                          json={"requests": [gsm_request("x" * 1001)]})
    assert too_long.status_code == 413 and "requests.0.completion" in too_long.text
    too_many = httpx.post(f"{base_url}/v1/score", headers=AUTH,
                          json={"requests": [gsm_request()] * 5})
    assert too_many.status_code == 413 and "max_batch" in too_many.text
    huge = httpx.post(f"{base_url}/v1/score", headers=AUTH, content=b"x" * 30_000)
    assert huge.status_code == 413

    def chunks():  # no Content-Length: refused from the headers (411), nothing read
        for _ in range(30):
            yield b"x" * 1000

    streamed = httpx.post(f"{base_url}/v1/score", headers=AUTH, content=chunks())
    assert streamed.status_code == 411 and "Content-Length" in streamed.text


@pytest.mark.parametrize("body, field", [
    ({"requests": [{"task": "gsm8k", "item": {}}]}, "requests.0.completion"),
    ({"requests": [{"task": "chess", "completion": "", "item": {}}]}, "requests.0.task"),
    ({"requests": [{"task": "gsm8k", "completion": 5, "item": {}}]}, "requests.0.completion"),
    ({"requests": [gsm_request()], "preset": "nope"}, "preset"),
    ({"requests": [gsm_request()], "extra": 1}, "extra"),
    ({"requests": [{"task": "math", "completion": "", "item": {}}], "preset": "compact"}, "compact"),
])
def test_malformed_bodies_name_the_field(base_url, body, field):
    response = httpx.post(f"{base_url}/v1/score", json=body, headers=AUTH)
    assert response.status_code == 422
    assert field in response.json()["detail"]


def test_invalid_json(base_url):
    response = httpx.post(f"{base_url}/v1/score", content=b"{nope",
                          headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"].startswith("body")


def test_hostile_bodies_do_not_500(base_url):
    surrogate = b'{"requests":[{"task":"math","completion":"\\\\boxed{\\ud800}",' \
                b'"item":{"reward_model":{"ground_truth":"\\ud800"}}}]}'
    response = httpx.post(f"{base_url}/v1/score", content=surrogate,
                          headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 200 and response.json()["results"][0]["status"] == "wrong"
    deep = b'{"requests":[{"task":"gsm8k","completion":"","item":{"x":' + b"[" * 15000 \
        + b"]" * 15000 + b"}}]}"
    response = httpx.post(f"{base_url}/v1/score", content=deep,
                          headers={**AUTH, "content-type": "application/json"})
    assert 400 <= response.status_code < 500


def test_metrics(base_url):
    httpx.post(f"{base_url}/v1/score", json={"requests": [gsm_request()]}, headers=AUTH)
    text = httpx.get(f"{base_url}/metrics", headers=AUTH).text
    assert 'bgpo_reward_items_total{status="ok",task="gsm8k"}' in text
    assert 'bgpo_reward_http_requests_total{code="401",path="/v1/score"}' in text
    assert "bgpo_reward_item_seconds_bucket" in text
    assert "bgpo_reward_isolation_idle_alive" in text


def test_refuses_to_start_without_token(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("BGPO_REWARDS_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token"):
        resolve_token()
    with pytest.raises(ValueError, match="token"):
        create_app("")
    assert main(["--port", "0"]) == 2
    assert "refusing to start" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    assert resolve_token(token_file=str(token_file)) == "abc"
    monkeypatch.setenv("BGPO_REWARDS_TOKEN", "from-env")
    assert resolve_token() == "from-env"
