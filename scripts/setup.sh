#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: bubblewrap (the code sandbox), a venv in
# .venv and this package with its dev and math extras. Safe to run again; it skips what is done.
# TORCH_SPEC picks the torch build: the default is the CPU build these machines carry; a GPU user
# sets TORCH_SPEC="torch" (or their CUDA wheel) before running it.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"

if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "[setup] installing bubblewrap (code sandbox)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
    else
        echo "[setup] WARNING: bubblewrap is missing and this is not root: code rewards will be" \
             "'sandbox_unavailable' until 'sudo apt-get install bubblewrap'" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.bgpo-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing $TORCH_SPEC and bgpo[dev,math] into .venv (about 1-2 minutes)"
    # pip warns about missing local index folders on some machines; keep the log readable.
    .venv/bin/pip install -q "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/pip install -q -e ".[dev,math]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import torch, transformers, ray, fastapi, math_verify" \
        || { echo "[setup] install failed" >&2; exit 1; }
    touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)')"
