#!/usr/bin/env bash
# The GPU check: everything this repo can only show on a CUDA machine, in one command, in at most
# 8 minutes on one H100/H200, with the results as JSON in OUTDIR.
#
#   scripts/gpu_check.sh OUTDIR            # on the GPU machine
#   scripts/gpu_check.sh --cpu OUTDIR      # a rehearsal here: every part, tiny sizes, a few seconds each
#   scripts/gpu_check.sh --fetch-wheels DIR   # on a machine with PyPI: wheels of pytest and pydantic
#
# Parts, each under its own timeout so a slow one cannot eat the others' time:
#   pytest          tests marked gpu, without the Ray-marked ones: -m "gpu and not ray"
#   learner_memory  benchmarks/learner_memory.py on CUDA, 1.07B parameters (hidden 2048, 16 layers,
#                   MLP 8192), bgpo and elbo_ratio at n_t 1, 4, 16 (an OOM is a recorded result)
#   learner_mc_chunk  the same model, bgpo at n_t 4 and 16 with mc_chunk 4 (4 MC samples per forward)
#   sampler_speed   benchmarks/sampler_speed.py on CUDA: the 1.07B model, batch 32, prompt 256, L 256:
#                   reference, prefix and dual cache, threshold 0.9, dual + threshold
# OUTDIR gets one JSON and one log per part, environment.json, and summary.json (written after every
# part, so a run killed half-way still says what ran): per part its status (passed, failed,
# timeout, skipped), the reason, seconds and output files.
#
# It needs only a Python with torch and transformers: the checkout goes on PYTHONPATH (nothing is
# installed into that Python). What else a part imports is checked before it starts (pytest,
# pydantic, ...): a part whose imports fail is skipped with the import error as its reason. With
# BGPO_WHEELS=DIR, missing pytest/pydantic are first installed from the wheels in DIR (pip
# --no-index: the GPU machine has no registry). Ray is never needed; Ray-marked tests are left out.
# Environment: PYTHON (default python3), BGPO_WHEELS, GPU_CHECK_BUDGET_S (default 470).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MODE=gpu
case "${1:-}" in
  --cpu) MODE=cpu; shift ;;
  --fetch-wheels)
    dir="${2:?usage: $0 --fetch-wheels DIR}"
    mkdir -p "$dir"
    # pydantic-core is compiled per Python version: fetch it for each CPython a GPU image may have.
    for v in 3.10 3.11 3.12 3.13; do
      "$PYTHON" -m pip download --quiet --only-binary=:all: --python-version "$v" \
        --platform manylinux2014_x86_64 --dest "$dir" pytest pydantic || exit 1
    done
    echo "wheels in $dir; on the GPU machine: BGPO_WHEELS=$dir $0 OUTDIR"
    exit 0 ;;
  -h|--help) sed -n 2,27p "$0"; exit 0 ;;
esac
OUT="${1:?usage: $0 [--cpu] OUTDIR}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
cd "$ROOT" || exit 1
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET_S:-470}"   # 8 minutes less a margin for start-up and the summary
PARTS="$OUT/parts.jsonl"
: > "$PARTS"

log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }

# summary.json from the parts recorded so far (rewritten after each part).
write_summary() {
  "$PYTHON" - "$OUT" "$MODE" "$START" <<'PY'
import json, sys, time
out, mode, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
parts = [json.loads(line) for line in open(f"{out}/parts.jsonl") if line.strip()]
counts = {s: sum(p["status"] == s for p in parts) for s in ("passed", "failed", "timeout", "skipped")}
summary = {"mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "seconds": round(time.time() - start, 1), "counts": counts,
           "ok": counts["failed"] == 0 and counts["timeout"] == 0, "parts": parts}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
PY
}

# record NAME STATUS SECONDS REASON [FILES...]
record() {
  "$PYTHON" - "$PARTS" "$@" <<'PY'
import json, sys
path, name, status, seconds, reason, *files = sys.argv[1:]
with open(path, "a") as f:
    f.write(json.dumps({"part": name, "status": status, "seconds": float(seconds),
                        "reason": reason, "files": files}) + "\n")
PY
  write_summary
}

# The seconds a part may take: its own limit, cut to what is left of the budget.
allowance() {
  local left=$(( BUDGET - ( $(date +%s) - START ) ))
  (( left < $1 )) && echo "$left" || echo "$1"
}

# run_part NAME LIMIT_S IMPORTS COMMAND...: skipped if IMPORTS (python modules) fail to import.
run_part() {
  local name="$1" limit="$2" imports="$3"; shift 3
  local logf="$OUT/$name.log" t0 rc secs why
  limit=$(allowance "$limit")
  if (( limit < 10 )); then
    log "$name: skipped, the ${BUDGET}s budget is spent"
    record "$name" skipped 0 "no time left in the ${BUDGET}s budget"; return
  fi
  if ! why=$("$PYTHON" -c "import $imports" 2>&1); then
    why=$(echo "$why" | tail -1)
    log "$name: skipped, cannot import $imports: $why"
    record "$name" skipped 0 "cannot import $imports: $why"; return
  fi
  log "$name: up to ${limit}s: $*"
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$logf" 2>&1
  rc=$?
  secs=$("$PYTHON" -c "import time; print(round(time.time() - $t0, 1))")
  local files=()
  for f in "$OUT/$name".*; do [[ "$f" == "$logf" ]] || files+=("$(basename "$f")"); done
  files+=("$(basename "$logf")")
  if (( rc == 124 || rc == 137 )); then
    log "$name: TIMEOUT after ${limit}s (tail of $logf below)"; tail -5 "$logf"
    record "$name" timeout "$secs" "ran past its ${limit}s limit" "${files[@]}"
  elif (( rc != 0 )); then
    log "$name: FAILED rc=$rc (tail of $logf below)"; tail -15 "$logf"
    record "$name" failed "$secs" "exit status $rc; see $(basename "$logf")" "${files[@]}"
  else
    log "$name: passed in ${secs}s"
    record "$name" passed "$secs" "" "${files[@]}"
  fi
}

# ---- environment -------------------------------------------------------------------------------
if ! "$PYTHON" -c "import torch, transformers" 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import torch and transformers; set PYTHON=/path/to/python" >&2
  exit 2
fi
if [[ -n "${BGPO_WHEELS:-}" ]]; then
  missing=()
  for pair in pytest:pytest pydantic:pydantic; do
    "$PYTHON" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
  done
  if (( ${#missing[@]} )); then
    log "installing ${missing[*]} from $BGPO_WHEELS (no index)"
    "$PYTHON" -m pip install --quiet --no-index --find-links "$BGPO_WHEELS" "${missing[@]}" \
      || log "installing ${missing[*]} failed: the parts that need them will be skipped"
  fi
fi
"$PYTHON" - "$OUT/environment.json" "$MODE" <<'PY'
import importlib, json, platform, subprocess, sys
import torch
env = {"mode": sys.argv[2], "python": sys.version.split()[0], "machine": platform.platform(),
       "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
       "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
for name in ("transformers", "tokenizers", "safetensors", "numpy", "yaml", "pydantic", "pytest", "ray"):
    try:
        env[name] = getattr(importlib.import_module(name), "__version__", "present")
    except ImportError as exc:
        env[name] = f"missing ({exc})"
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                        "--format=csv,noheader"], capture_output=True, text=True,
                                       timeout=20).stdout.strip()
except (OSError, subprocess.TimeoutExpired) as exc:
    env["nvidia_smi"] = f"not run ({type(exc).__name__})"
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env))
PY
if [[ "$MODE" == gpu ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: CUDA is not available to $PYTHON (use --cpu for a rehearsal)" >&2
  exit 2
fi

# ---- sizes: the real check, or the CPU rehearsal ---------------------------------------------
if [[ "$MODE" == gpu ]]; then
  DEVICE=cuda
  MODEL=(--hidden 2048 --layers 16 --heads 16 --intermediate 8192 --batch 8 --prompt-length 32
         --response-length 256)
  SAMPLER=(--models 1b --batch 32 --prompt-length 256 --repeats 1)
  N_T=1,4,16 CHUNK_N_T=4,16 CHUNK=4
  T_PYTEST=100 T_MEMORY=170 T_CHUNK=70 T_SAMPLER=120 CHILD=60
else
  DEVICE=cpu
  MODEL=(--hidden 64 --layers 2 --heads 2 --batch 2 --prompt-length 8 --response-length 32
         --threads 1)
  SAMPLER=(--models tiny --batch 2 --prompt-length 16 --gen-length 32 --block-length 16
           --steps 32 --repeats 1 --threads 1)
  N_T=1,4 CHUNK_N_T=4 CHUNK=2  # the CPU tracker costs about 10x a plain step: small n_t only
  T_PYTEST=100 T_MEMORY=120 T_CHUNK=60 T_SAMPLER=60 CHILD=50
fi

# ---- the parts ---------------------------------------------------------------------------------
# Test files with a gpu mark whose imports this Python has (a file importing ray is left out
# here, not reported as a collection error); the rest are listed in pytest_left_out.txt.
mapfile -t GPU_TESTS < <("$PYTHON" - 2> "$OUT/pytest_left_out.txt" <<'PY'
import ast, importlib.util, pathlib, sys
for path in sorted(pathlib.Path("tests").rglob("test_*.py")):
    text = path.read_text()
    if "mark.gpu" not in text:
        continue
    tree = ast.parse(text)
    mods = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in tree.body
             if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    missing = []
    for m in sorted(mods):
        try:
            importlib.import_module(m)
        except Exception as exc:
            missing.append(f"{m} ({type(exc).__name__})")
    if missing:
        print(f"gpu_check: leaving out {path}: cannot import {', '.join(missing)}", file=sys.stderr)
    else:
        print(path)
PY
)
[[ -s "$OUT/pytest_left_out.txt" ]] && cat "$OUT/pytest_left_out.txt"
if ! "$PYTHON" -c "import pytest" 2>/dev/null; then
  record pytest skipped 0 "pytest is not installed (BGPO_WHEELS=DIR installs it from wheels)"
elif (( ${#GPU_TESTS[@]} )); then
  run_part pytest "$T_PYTEST" pytest "$PYTHON" -m pytest -q -m "gpu and not ray" -p no:cacheprovider \
    --junitxml "$OUT/pytest.xml" "${GPU_TESTS[@]}"
  # The test counts go into the pytest part; a run where every test skipped is "skipped".
  "$PYTHON" - "$PARTS" "$OUT/pytest.xml" <<'PY'
import json, pathlib, sys
import xml.etree.ElementTree as ET
parts_path, xml = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
lines = parts_path.read_text().splitlines()
part = json.loads(lines[-1])
if part["part"] == "pytest" and xml.exists():
    cases = ET.parse(xml).getroot().iter("testcase")
    tests = {"passed": [], "failed": [], "skipped": []}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        key = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        tests[key].append(name)
    part["tests"] = tests
    if part["status"] == "passed" and not tests["passed"]:
        part["status"], part["reason"] = "skipped", f"all {len(tests['skipped'])} tests skipped"
    lines[-1] = json.dumps(part)
    parts_path.write_text("\n".join(lines) + "\n")
PY
  write_summary
else
  record pytest skipped 0 "no gpu-marked test file can be imported (pytest_left_out.txt)"
fi

run_part learner_memory "$T_MEMORY" "dllm, learner" "$PYTHON" benchmarks/learner_memory.py \
  --device "$DEVICE" "${MODEL[@]}" --objectives bgpo,elbo_ratio --n-t "$N_T" \
  --child-timeout "$CHILD" --json "$OUT/learner_memory.json"

run_part learner_mc_chunk "$T_CHUNK" "dllm, learner" "$PYTHON" benchmarks/learner_memory.py \
  --device "$DEVICE" "${MODEL[@]}" --objectives bgpo --n-t "$CHUNK_N_T" --mc-chunk "$CHUNK" \
  --child-timeout "$CHILD" --json "$OUT/learner_mc_chunk.json"

run_part sampler_speed "$T_SAMPLER" "dllm, rollout" "$PYTHON" benchmarks/sampler_speed.py \
  --device "$DEVICE" "${SAMPLER[@]}" --json "$OUT/sampler_speed.json"

write_summary
log "done: $OUT/summary.json"
"$PYTHON" -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['counts']); [print(f\"  {p['part']:<17} {p['status']:<8} {p['seconds']:>6.1f}s {p['reason']}\") for p in s['parts']]; sys.exit(0 if s['ok'] else 1)" "$OUT/summary.json"
