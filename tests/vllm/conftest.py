"""Shared fixtures of the vLLM tests: one tiny causal model folder and one engine per session.

Tests marked `vllm` need the separate environment made by `make setup-vllm`
(scripts/setup_vllm.sh); without it they are skipped with that reason. The vLLM engine takes
about 15-20 s to start, so every `vllm` test shares the session's one worker.
"""

import pytest
from vllm_helpers import VLLM_READY, tiny_causal

from rollout.causal_sampler import CausalSamplingConfig
from rollout.vllm_client import VLLMRolloutClient


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-causal")
    tiny_causal(0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def vllm_client(model_dir, tmp_path_factory):
    if not VLLM_READY.exists():
        pytest.skip(f"no vLLM environment ({VLLM_READY} is missing): run `make setup-vllm`")
    log = tmp_path_factory.mktemp("vllm-log") / "worker.log"
    client = VLLMRolloutClient(
        "vllm-0", model_dir, CausalSamplingConfig(gen_length=16, temperature=0), log_path=log
    )
    yield client
    client.close()
