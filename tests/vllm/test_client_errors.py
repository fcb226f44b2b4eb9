"""The vLLM worker's protocol and the client's failure modes, without vLLM (not marked `vllm`).

The worker loop (`rollout.vllm_engine.serve`) runs in a thread against a fake engine; fake
"pythons" (shell scripts) stand in for a worker that dies or hangs.
"""

import importlib.util
import os
import socket
import stat
import sys
import threading
import time

import pytest
import torch
from vllm_helpers import tiny_causal

from rollout.causal_sampler import CausalSamplingConfig
from rollout.vllm_client import VLLMRolloutClient, VLLMWorkerError, vllm_python
from rollout.vllm_engine import checkpoint_shapes, recv_message, select_update, send_message, serve


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-causal")
    tiny_causal(0).save_pretrained(path)
    return path


def fake_python(tmp_path, body: str):
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_frames_round_trip_every_dtype():
    a, b = socket.socketpair()
    tensors = [
        torch.randn(3, 4),
        torch.randn(5).to(torch.bfloat16),
        torch.arange(7, dtype=torch.int64),
        torch.zeros(0, dtype=torch.float32),
        torch.randn(2, 3).t(),  # not contiguous
    ]
    sender = threading.Thread(target=send_message, args=(a, {"op": "x", "n": [1, 2]}, tensors))
    sender.start()
    header, got = recv_message(b, deadline=time.monotonic() + 10)
    sender.join()
    assert header == {"op": "x", "n": [1, 2]}
    for sent, received in zip(tensors, got, strict=True):
        assert received.dtype == sent.dtype and received.shape == sent.shape
        torch.testing.assert_close(received, sent, rtol=0, atol=0)
    a.close()
    with pytest.raises(EOFError):
        recv_message(b, deadline=time.monotonic() + 10)


def test_recv_deadline():
    a, b = socket.socketpair()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        recv_message(b, deadline=time.monotonic() + 0.2)
    assert time.monotonic() - start < 5
    a.close()


class FakeEngine:
    """Stands in for VLLMEngine: echoes each prompt's first token, rejects updates without 'w'."""

    policy_version = 0

    def generate(self, prompts, seeds, *, temperature, max_tokens):
        return [([p[0]] * max_tokens, [-0.5] * max_tokens) for p in prompts]

    def load_weights(self, version, named):
        if "w" not in named:
            raise KeyError("weights missing from the update: ['w']")
        self.policy_version = version


def test_serve_answers_requests_and_reports_errors():
    a, b = socket.socketpair()
    worker = threading.Thread(target=serve, args=(b, FakeEngine()))
    worker.start()
    deadline = lambda: time.monotonic() + 10  # noqa: E731
    send_message(a, {"op": "load_weights", "version": 3, "names": ["v"]}, [torch.ones(2)])
    reply, _ = recv_message(a, deadline())
    assert not reply["ok"] and "missing" in reply["error"]  # answered; the worker keeps serving
    send_message(a, {"op": "load_weights", "version": 3, "names": ["w"]}, [torch.ones(2)])
    assert recv_message(a, deadline())[0]["version"] == 3
    flat, lengths, seeds = torch.tensor([9, 8, 7, 6]), torch.tensor([1, 3]), torch.tensor([1, 2])
    send_message(a, {"op": "generate", "temperature": 1.0, "max_tokens": 2}, [flat, lengths, seeds])
    reply, (tokens, logps, counts) = recv_message(a, deadline())
    assert reply["ok"] and reply["version"] == 3
    assert tokens.tolist() == [9, 9, 8, 8] and counts.tolist() == [2, 2] and logps.tolist() == [-0.5] * 4
    send_message(a, {"op": "nonsense"})
    assert "unknown request" in recv_message(a, deadline())[0]["error"]
    a.close()  # end of stream ends the worker loop
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_missing_environment_names_the_setup_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="make setup-vllm"):
        vllm_python(tmp_path / "no-such-venv" / "bin" / "python")


def test_a_worker_that_dies_is_reported_with_its_log(tmp_path, model_dir):
    python = fake_python(tmp_path, 'echo "ImportError: no module named vllm" >&2; exit 3')
    with pytest.raises(VLLMWorkerError, match=r"exited \(code 3\)(.|\n)*no module named vllm"):
        VLLMRolloutClient("vllm-x", model_dir, CausalSamplingConfig(gen_length=4), python=python,
                          log_path=tmp_path / "w.log")  # fmt: skip


def test_a_worker_past_its_deadline_is_stopped(tmp_path, model_dir):
    pid_file = tmp_path / "pid"
    python = fake_python(tmp_path, f"echo $$ > {pid_file}; exec sleep 60")
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer to 'start' within 1s; the worker was stopped"):
        VLLMRolloutClient("vllm-x", model_dir, CausalSamplingConfig(gen_length=4), python=python,
                          start_timeout=1.0, log_path=tmp_path / "w.log")  # fmt: skip
    assert time.monotonic() - start < 15
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)


def test_update_must_cover_the_checkpoint(model_dir):
    expected = checkpoint_shapes(model_dir)
    state = tiny_causal(1).model.state_dict()
    assert set(select_update(state, expected, tied_lm_head=False)) == set(expected)
    with pytest.raises(KeyError, match="not in the served model.*extra"):
        select_update(dict(state, extra=torch.zeros(1)), expected, tied_lm_head=False)
    with pytest.raises(KeyError, match="missing from the update"):
        select_update({k: v for k, v in state.items() if "layers.1." not in k}, expected, tied_lm_head=False)
    with pytest.raises(ValueError, match="not a floating type"):
        select_update(dict(state, **{"lm_head.weight": state["lm_head.weight"].long()}), expected,
                      tied_lm_head=False)  # fmt: skip
    # Tied embeddings: the checkpoint has no lm_head.weight, the learner's state dict does.
    tied = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    assert "lm_head.weight" not in select_update(state, tied, tied_lm_head=True)
    with pytest.raises(KeyError, match="lm_head"):
        select_update(state, tied, tied_lm_head=False)


@pytest.mark.slow  # the worker imports torch and transformers before it finds no vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this python has vllm")
def test_a_python_without_vllm_is_named_in_the_error(tmp_path, model_dir):
    with pytest.raises(VLLMWorkerError, match="failed 'start': ModuleNotFoundError: No module named 'vllm'"):
        VLLMRolloutClient("vllm-x", model_dir, CausalSamplingConfig(gen_length=4), python=sys.executable,
                          log_path=tmp_path / "w.log")  # fmt: skip
