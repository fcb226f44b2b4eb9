# The two commands of the README: `make train` (the main job) and `make test`. Both set up first.
.PHONY: setup setup-vllm train test test-all lint bench

# Ray on one machine: keep every listener on loopback and token auth off for throwaway clusters
# (../shared/reference/platform.md); real clusters set RAY_AUTH_MODE=token.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_AUTH_MODE ?= disabled

setup:
	bash scripts/setup.sh

# The separate vLLM environment (.venv-vllm) for the autoregressive baseline's rollouts; the tests
# marked vllm skip, saying so, until it exists.
setup-vllm:
	bash scripts/setup_vllm.sh

train: setup
	.venv/bin/bgpo train $(ARGS)

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q $(ARGS)

# Everything, the single-node drills that the multinode tests cover included (about 2 minutes more).
test-all: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -m "" $(ARGS)

lint: setup
	.venv/bin/ruff check .
