"""`engine: vllm` for causal policies: a vLLM `LLM` on a local model folder, with in-place weight
updates, run as a small worker process in the separate `.venv-vllm` environment.

Three parts, each usable alone:
- `VLLMEngine`: a plain class (no Ray, no sockets) that generates one completion per (prompt, seed)
  with the sampled tokens' log-probs, and loads a new policy version into the running engine's
  model in place (`reload_weights`, the hook vLLM's own RL weight sync calls; no engine restart).
- The framed protocol (`send_message` / `recv_message`): a length-prefixed JSON header followed by
  raw tensor buffers (numpy bytes; bfloat16 travels as its 16-bit pattern). No pickle.
- `main`: the worker loop, `python -m rollout.vllm_engine --fd N --config JSON`, one request at a
  time over an inherited socket. `rollout.vllm_client.VLLMRolloutClient` starts it from the main
  environment. A request that fails is answered with the error and the engine keeps serving;
  end-of-stream on the socket (the client went away) ends the worker.

Log-probs are vLLM's `processed_logprobs`: those of the distribution sampled from (after
temperature; greedy gets the raw logits'), the same convention as `rollout.causal_sampler`.
vLLM's V1 engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so a weight update
is a direct call on the model with no second copy of the weights in flight.
This module imports vllm only inside `VLLMEngine`; it does not tag rollouts or seed samples
(the client does), score or train.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_HEADER = struct.Struct("<Q")  # 8-byte little-endian length of the JSON header that follows


# ---------------------------------------------------------------------------------------------
# Framed protocol
# ---------------------------------------------------------------------------------------------


def _raw(tensor: torch.Tensor | np.ndarray) -> tuple[str, list[int], memoryview]:
    """(dtype name, shape, bytes) of a tensor; bfloat16 has no numpy dtype, its bits go as int16."""
    if isinstance(tensor, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    tensor = tensor.detach().cpu().contiguous()
    name = str(tensor.dtype).removeprefix("torch.")
    array = tensor.view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    return name, list(tensor.shape), memoryview(array).cast("B")


def send_message(
    sock: socket.socket, header: dict[str, Any], tensors: Sequence[torch.Tensor | np.ndarray] = ()
) -> None:
    """One frame: header length, JSON header (with the tensors' dtypes and shapes), raw buffers."""
    raws = [_raw(t) for t in tensors]
    body = dict(header, _tensors=[{"dtype": d, "shape": s} for d, s, _ in raws])
    encoded = json.dumps(body).encode()
    sock.sendall(_HEADER.pack(len(encoded)) + encoded)
    for _, _, buf in raws:
        sock.sendall(buf)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    if deadline is None:
        sock.settimeout(None)
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed while reading a message")
            sock.settimeout(left)
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError as exc:
            raise TimeoutError("deadline passed while reading a message") from exc
        if k == 0:
            raise EOFError(f"the peer closed the connection ({got} of {n} bytes read)")
        got += k
    return buf


def recv_message(
    sock: socket.socket, deadline: float | None = None
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """The next frame as (header, tensors); EOFError at end of stream, TimeoutError past `deadline`
    (a time.monotonic() value)."""
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    header = json.loads(_recv_exact(sock, length, deadline).decode())
    tensors = []
    for spec in header.pop("_tensors"):
        dtype = getattr(torch, spec["dtype"])
        shape = tuple(spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        buf = _recv_exact(sock, nbytes, deadline)
        # frombuffer shares the received bytes (no copy); bytearrays are writable.
        flat = torch.frombuffer(buf, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
        tensors.append(flat.view(shape))
    return header, tensors


# ---------------------------------------------------------------------------------------------
# The engine (runs where vllm is importable)
# ---------------------------------------------------------------------------------------------


def checkpoint_shapes(model_path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every weight in the folder's safetensors files (headers only)."""
    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_path} holds no *.safetensors weights")
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def select_update(
    named: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], *, tied_lm_head: bool
) -> dict[str, torch.Tensor]:
    """The update to load; fails, naming the tensor, unless it covers the checkpoint exactly.

    A learner's `state_dict()` of a model with tied embeddings also holds `lm_head.weight`, which
    `save_pretrained` leaves out of the checkpoint (it is the embedding): that one is dropped.
    """
    if tied_lm_head and "lm_head.weight" in named and "lm_head.weight" not in expected:
        named = {k: v for k, v in named.items() if k != "lm_head.weight"}
    unknown = sorted(set(named) - set(expected))
    missing = sorted(set(expected) - set(named))
    if unknown:
        raise KeyError(f"weights not in the served model: {unknown[:5]} ({len(unknown)} in all)")
    if missing:
        raise KeyError(f"weights missing from the update: {missing[:5]} ({len(missing)} in all)")
    for name, value in named.items():
        if tuple(value.shape) != expected[name]:
            raise ValueError(f"weight {name!r}: shape {tuple(value.shape)} != served model's {expected[name]}")
        if not value.is_floating_point():
            raise ValueError(f"weight {name!r} has dtype {value.dtype}, not a floating type")
    return named


class VLLMEngine:
    """A vLLM engine on one local model folder; generation with log-probs, in-place weight loads."""

    def __init__(
        self,
        model_path: str,
        *,
        eos_id: int,
        dtype: str = "float32",
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool = True,
        gpu_memory_utilization: float = 0.5,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
        from vllm import LLM

        self.model_path = str(model_path)
        self.eos_id = int(eos_id)
        self.expected = checkpoint_shapes(model_path)
        config = json.loads((Path(model_path) / "config.json").read_text())
        self.tied_lm_head = bool(config.get("tie_word_embeddings", False))
        # The tokenizer stays in the caller's process: prompts come in as ids, ids go back out.
        self.llm = LLM(
            model=self.model_path,
            dtype=dtype,
            skip_tokenizer_init=True,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization,
            logprobs_mode="processed_logprobs",
        )
        self.policy_version = 0

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        seeds: Sequence[int],
        *,
        temperature: float,
        max_tokens: int,
    ) -> list[tuple[list[int], list[float]]]:
        """One completion per (prompt, seed): (token ids, their log-probs), stopping at EOS (kept)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                max_tokens=max_tokens,
                seed=int(seed),
                logprobs=0,  # only the sampled token's log-prob
                stop_token_ids=[self.eos_id],
                detokenize=False,
            )
            for seed in seeds
        ]
        requests = [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            if completion.logprobs is None or len(completion.logprobs) != len(tokens):
                raise RuntimeError(f"vLLM returned no log-prob for some tokens of request {out.request_id}")
            logps = [float(step[tok].logprob) for tok, step in zip(tokens, completion.logprobs, strict=True)]
            results.append((tokens, logps))
        return results

    def load_weights(self, version: int, named: dict[str, torch.Tensor]) -> None:
        """Replace every weight in place and set the version; a bad update changes nothing.

        `reload_weights` copies checkpoint-format tensors (HF names: q/k/v and gate/up are fused by
        the model's own loader) into the live parameters and redoes the post-load processing (the
        CPU backend repacks linear weights). The prefix cache holds keys and values computed with
        the old weights, so it is dropped.
        """
        named = select_update(named, self.expected, tied_lm_head=self.tied_lm_head)
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": iter(named.items()), "is_checkpoint_format": True},
        )
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update")
        self.policy_version = int(version)


# ---------------------------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------------------------


def _split(flat: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    pieces = torch.split(flat, lengths.tolist()) if flat.numel() else [flat[:0]] * len(lengths)
    return [p.tolist() for p in pieces]


def serve_generate(engine: VLLMEngine, header: dict, tensors: list[torch.Tensor]):
    """generate: tensors (prompt ids concatenated, prompt lengths, seeds) -> (tokens, logps, lengths)."""
    flat, lengths, seeds = tensors
    start = time.perf_counter()
    results = engine.generate(
        _split(flat, lengths),
        seeds.tolist(),
        temperature=float(header["temperature"]),
        max_tokens=int(header["max_tokens"]),
    )
    tokens = torch.tensor([t for toks, _ in results for t in toks], dtype=torch.int64)
    logps = torch.tensor([lp for _, lps in results for lp in lps], dtype=torch.float32)
    counts = torch.tensor([len(toks) for toks, _ in results], dtype=torch.int64)
    reply = {"version": engine.policy_version, "seconds": time.perf_counter() - start}
    return reply, [tokens, logps, counts]


def serve_load_weights(engine: VLLMEngine, header: dict, tensors: list[torch.Tensor]):
    names = header["names"]
    if len(names) != len(tensors):
        raise ValueError(f"{len(names)} weight names but {len(tensors)} tensors")
    start = time.perf_counter()
    engine.load_weights(int(header["version"]), dict(zip(names, tensors, strict=True)))
    return {"version": engine.policy_version, "seconds": time.perf_counter() - start}, []


HANDLERS = {"generate": serve_generate, "load_weights": serve_load_weights}


def serve(sock: socket.socket, engine: VLLMEngine) -> None:
    """Answer requests until the client closes the socket or sends `shutdown`."""
    while True:
        try:
            header, tensors = recv_message(sock)
        except EOFError:
            return
        op = header.get("op")
        if op == "shutdown":
            send_message(sock, {"ok": True})
            return
        try:
            if op not in HANDLERS:
                raise ValueError(f"unknown request {op!r}; expected one of {sorted(HANDLERS)}")
            reply, out = HANDLERS[op](engine, header, tensors)
        except Exception as exc:  # answered, not swallowed: the client raises it
            send_message(sock, {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()})  # fmt: skip
            continue
        send_message(sock, dict(reply, ok=True), out)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="vLLM rollout worker (started by VLLMRolloutClient)")
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of the client socket")
    parser.add_argument("--config", required=True, help="JSON keyword arguments of VLLMEngine")
    args = parser.parse_args(None if argv is None else list(argv))
    sock = socket.socket(fileno=args.fd)
    try:
        engine = VLLMEngine(**json.loads(args.config))
    except Exception as exc:
        send_message(sock, {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()})  # fmt: skip
        raise
    import vllm

    send_message(sock, {"ok": True, "vllm": vllm.__version__, "pid": os.getpid()})
    serve(sock, engine)


if __name__ == "__main__":  # vLLM may spawn helpers that re-import the main module
    main()
