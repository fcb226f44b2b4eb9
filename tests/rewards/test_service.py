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
from rewards.types import ScoringOptions

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


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs the code sandbox (bubblewrap)")
def test_a_client_that_disconnects_gives_up_its_queued_items():
    """Three code items that sleep past a 3 s deadline on one verifier slot would hold it for 9 s;
    the client hangs up after 0.7 s, and its batch ends at once: every item `error`, unscored."""
    rec = json.loads((FIXTURES / "code_rows.json").read_text())["humaneval"][0]
    sleeper = f"```python\ndef {rec['entry_point']}(*a, **k):\n    import time\n    time.sleep(30)\n```"
    body = json.dumps({"requests": [{"task": "humaneval", "completion": sleeper, "item": rec["row"]}] * 3})
    port = free_port()
    app = create_app(TOKEN, max_concurrency=1, options=ScoringOptions(deadline_s=3.0))
    server = make_server(app, "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall((f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                            f"{body}").encode())
            time.sleep(0.7)
        hung_up = time.monotonic()
        wanted = 'bgpo_reward_items_total{status="error",task="humaneval"} 3.0'
        while wanted not in (text := httpx.get(f"http://127.0.0.1:{port}/metrics", headers=AUTH).text):
            assert time.monotonic() - hung_up < 2.5, text[-2000:]  # not after 3 x 3 s
            time.sleep(0.1)
        assert 'status="timeout"' not in text
    finally:
        server.should_exit = True
        thread.join(timeout=15)


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


def test_limits_that_make_no_sense_refuse_to_start(monkeypatch, capsys):
    monkeypatch.setenv("BGPO_REWARDS_TOKEN", "t")
    assert main(["--max-body-bytes", "100", "--max-inflight-body-bytes", "10"]) == 2
    assert "max_inflight_body_bytes" in capsys.readouterr().err
    assert main(["--body-idle-s", "0"]) == 2
    with pytest.raises(ValueError, match="max_connections"):
        make_server(create_app(TOKEN), max_connections=0)


# ----- hostile clients against `bgpo serve-rewards` in its own process ---------------------------
MiB = 1 << 20
CAP = 8 * MiB  # --max-body-bytes
INFLIGHT = 20 * MiB  # --max-inflight-body-bytes
IDLE_S, TOTAL_S, HEAD_S = 1.0, 3.0, 2.0  # --body-idle-s, --body-timeout-s, --head-timeout-s
MAX_CONNECTIONS = 12


class Served:
    """A `bgpo serve-rewards` process: its pid, port, TMPDIR and log."""

    def __init__(self, proc: subprocess.Popen, port: int, tmpdir: str, log: Path) -> None:
        self.proc, self.port, self.tmpdir, self.log = proc, port, tmpdir, log

    def rss(self) -> int:
        """Resident bytes of the server process (VmRSS in /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def healthz(self) -> int:
        return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=10).status_code


@pytest.fixture(scope="module")
def served():
    # Its own TMPDIR, traversable by the sandbox's pool uid like the host's /tmp.
    tmpdir = tempfile.mkdtemp(prefix="bgpo-test-serve-", dir="/tmp")
    os.chmod(tmpdir, 0o755)
    log = Path(tmpdir + ".log")
    port = free_port()
    flags = ["--port", str(port), "--max-concurrency", "1", "--max-body-bytes", str(CAP),
             "--max-inflight-body-bytes", str(INFLIGHT), "--body-idle-s", str(IDLE_S),
             "--body-timeout-s", str(TOTAL_S), "--head-timeout-s", str(HEAD_S),
             "--max-connections", str(MAX_CONNECTIONS), "--keep-alive-s", "2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve-rewards", *flags],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TMPDIR": tmpdir, "BGPO_REWARDS_TOKEN": TOKEN})
    server = Served(proc, port, tmpdir, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "server did not answer /healthz"
            try:
                if server.healthz() == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmpdir, ignore_errors=True)
        log.unlink(missing_ok=True)


def head(method: str, path: str, *lines: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: test", *lines, "", ""]).encode()


def connect(port: int, data: bytes = b"", timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, raw bytes) of what the server sends until it closes; status 0 for nothing."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset after the answer
        pass
    finally:
        sock.close()
    return (int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0), data


def eventually(port: int, request: bytes, status: int, within_s: float = 5.0) -> bytes:
    """Send `request` on fresh connections until one is answered `status` (the server's event
    loop may not have seen the connections or heads that set the condition up yet)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            got, raw = response(connect(port, request, timeout=0.5))
        except TimeoutError:  # e.g. admitted, and waiting for a body we never send
            got, raw = None, b"no answer within 0.5 s"
        if got == status:
            return raw
        assert time.monotonic() < deadline, (status, got, raw)
        time.sleep(0.1)


BEARER = f"Authorization: Bearer {TOKEN}"
REFUSED_FROM_HEADERS = [  # (request head, status): no body byte is ever sent
    (head("POST", "/v1/score", "Content-Length: 1000000000"), 401),
    (head("POST", "/v1/score", "Authorization: Bearer nope", "Content-Length: 1000000000"), 403),
    (head("POST", "/metrics", "Content-Length: 1000000000"), 401),
    (head("PUT", "/anything", "Transfer-Encoding: chunked"), 401),
    (head("GET", "/healthz", "Content-Length: 1000000000"), 413),
    (head("GET", "/healthz", "Content-Length: 1"), 413),
    (head("POST", "/healthz", "Transfer-Encoding: chunked"), 413),
    (head("POST", "/v1/score", BEARER, f"Content-Length: {CAP + 1}"), 413),
    (head("POST", "/v1/score", BEARER, "Transfer-Encoding: chunked"), 411),
]


def test_refused_from_the_headers_before_any_body(served):
    for request, status in REFUSED_FROM_HEADERS:
        got, raw = response(connect(served.port, request, timeout=5))  # < body-idle + slack
        assert got == status, (request, raw)
        assert b"connection: close" in raw.lower()


def test_large_unauthenticated_bodies_are_not_read(served):
    """8 clients stream 32 MiB bodies at /healthz and /v1/score without a token: each is
    answered while it is still sending, and the server's RSS does not grow by the bodies."""
    body_bytes, chunk = 32 * MiB, b"x" * MiB
    before, peak, results = served.rss(), [0], {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], served.rss())
            time.sleep(0.01)

    def flood(i: int) -> None:
        path = "/healthz" if i % 2 else "/v1/score"
        sock = connect(served.port, head("POST", path, f"Content-Length: {body_bytes}"))
        reader = threading.Thread(target=lambda: results.__setitem__(i, response(sock)[0]))
        reader.start()
        sent = 0
        try:
            while sent < body_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed the connection: what we still had was never read
            pass
        reader.join(10)
        results[i, "sent"] = sent

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=flood, args=(i,)) for i in range(8)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(30)
    done.set()
    sampler.join()
    print(f"flood: rss before {before / MiB:.1f} MiB, peak {peak[0] / MiB:.1f} MiB; sent "
          f"{[results[i, 'sent'] // MiB for i in range(8)]} MiB of {body_bytes // MiB} each")
    assert [results.get(i) for i in range(8)] == [401, 413] * 4
    assert all(results[i, "sent"] < body_bytes for i in range(8)), results  # cut off mid-body
    assert peak[0] - before < 32 * MiB, (before, peak[0])  # the old guard: 8 x 32 MiB buffered


def test_stalled_bodies_are_answered_408_and_freed(served):
    """8 clients declare 2 MiB, send 1 MiB and stall; one trickles 1 KiB every 0.4 s. Each is
    answered 408 (the stalled after the idle limit, the trickler after the total one) while
    /healthz answers, a body that would pass the in-flight limit is refused (503), and RSS
    grows by what was sent, not by what was declared."""
    before = served.rss()
    declared, sent = 2 * MiB, MiB
    score_head = head("POST", "/v1/score", BEARER, f"Content-Length: {declared}",
                      "Content-Type: application/json")
    started = time.monotonic()
    stalled = [connect(served.port, score_head + b"x" * sent) for _ in range(8)]
    trickler = connect(served.port, score_head)
    answers: dict = {}

    def wait_answer(key, sock) -> None:
        status, _ = response(sock)
        answers[key] = (status, time.monotonic() - started)

    readers = [threading.Thread(target=wait_answer, args=(i, s)) for i, s in enumerate(stalled)]
    for r in readers:
        r.start()
    time.sleep(0.3)  # the bodies are in
    during = served.rss()
    assert served.healthz() == 200
    # 8 x 2 MiB reserved: a further 8 MiB would hold 24 MiB > 20 MiB in flight.
    raw = eventually(served.port, head("POST", "/v1/score", BEARER, f"Content-Length: {CAP}"), 503)
    assert b"in flight" in raw, raw
    trickled = 0
    try:
        while time.monotonic() - started < TOTAL_S + 3:
            trickler.sendall(b"x" * 1024)
            trickled += 1024
            time.sleep(0.4)
    except OSError:  # answered and closed
        pass
    answers["trickler"] = (response(trickler)[0], time.monotonic() - started)
    for r in readers:
        r.join(TOTAL_S + 5)
    assert [answers.get(i, (None,))[0] for i in range(8)] == [408] * 8, answers
    assert all(IDLE_S * 0.9 <= answers[i][1] < TOTAL_S + 3 for i in range(8)), answers
    status, seconds = answers["trickler"]
    assert status == 408 and TOTAL_S * 0.9 <= seconds < TOTAL_S + 3, answers["trickler"]
    print(f"stall: rss before {before / MiB:.1f} MiB, during {during / MiB:.1f} MiB; "
          f"answers {answers}")
    assert during - before < 8 * sent + 16 * MiB, (before, during)
    assert served.healthz() == 200


def test_connections_without_a_whole_head_are_closed(served):
    silent = connect(served.port)
    partial = connect(served.port, b"GET /healthz HTTP/1.1\r\nHost: te")
    started = time.monotonic()
    for sock in (silent, partial):
        assert response(sock) == (0, b"")  # closed without an answer
    assert HEAD_S * 0.9 <= time.monotonic() - started < HEAD_S + 3


def test_connections_over_the_cap_get_503(served):
    probe = head("GET", "/healthz", "Connection: close")
    idle = [connect(served.port) for _ in range(MAX_CONNECTIONS)]
    try:
        assert b"Service Unavailable" in eventually(served.port, probe, 503)
        for sock in idle[:2]:
            sock.close()
        eventually(served.port, probe, 200)
    finally:
        for sock in idle:
            sock.close()


def test_correct_answer_still_scores_after_the_hostile_clients(served):
    item = row("countdown")  # numbers [30, 100, 93], target 23
    body = {"requests": [{"task": "countdown", "completion": "<answer>93-100+30</answer>",
                          "item": item}]}
    got = httpx.post(f"http://127.0.0.1:{served.port}/v1/score", json=body, headers=AUTH,
                     timeout=30)
    assert got.status_code == 200 and got.json()["results"][0]["score"] == 1.0


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids.update(int(p) for p in (task / "children").read_text().split())
    return kids


def _running(pid: int) -> bool:
    """Alive and not a zombie (a pid 1 that does not reap would leave those)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_exits_0_and_leaves_no_folder(served):
    """Last in the file: it stops the module's server."""
    assert list(Path(served.tmpdir).glob("bgpo-harness-*")), "the probe staged no harness"
    children = _children(served.proc.pid)  # isolation children, prestarted sandboxes
    assert children
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0, served.log.read_text()[-2000:]
    assert not list(Path(served.tmpdir).glob("bgpo-harness-*")), os.listdir(served.tmpdir)
    deadline = time.monotonic() + 10
    while alive := {p for p in children if _running(p)}:
        assert time.monotonic() < deadline, f"children still alive: {alive}"
        time.sleep(0.05)
