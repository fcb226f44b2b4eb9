#!/usr/bin/env bash
# Reproduce the BGPO paper's four settings (docs/reproduce.md): evaluate the base model, train each
# preset (configs/llada-{math,code,countdown,sudoku}.yaml), evaluate the trained checkpoint on the
# paper's test sets, and collect every summary.json into one markdown table.
#
# UNTESTED: written for one 8-GPU node (or a Ray cluster), never run on GPUs yet. The presets shard
# the learner with FSDP2 over 4 GPUs (fp32 master weights, bf16 compute), which is tested on CPU
# only (docs/reproduce.md, STATUS). SKIP_TRAIN=1 runs the base-model evaluations alone.
#
# Usage:  DATA_DIR=/shared/data OUT_DIR=/shared/runs scripts/reproduce_paper.sh [math code countdown sudoku]
# Environment:
#   DATA_DIR      folder with train/ and test/ parquet files in the d1/BGPO layout (required)
#   OUT_DIR       where runs and evaluations go; every Ray node must see it (default: runs/paper)
#   CODE_TRAIN    code training rows (the paper's LiveCodeBench v5 / PrimeIntellect / TACO);
#                 needed for `code` unless SKIP_TRAIN=1 (see docs/reproduce.md for the reward caveat)
#   BASE_MODEL    default GSAI-ML/LLaDA-8B-Instruct
#   JOB_ADDRESS   e.g. http://HEAD:8265: submit every step with `ray job submit`; unset: run here
#   EVAL_WORKERS  rollout actors (one GPU each) per evaluation, default 8
#   SKIP_TRAIN=1  evaluate only (the base model, and trained checkpoints already in OUT_DIR)
#   SKIP_BASE=1   do not evaluate the base model
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

: "${DATA_DIR:?set DATA_DIR to the folder holding train/ and test/ parquet files}"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
OUT_DIR="${OUT_DIR:-runs/paper}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
BASE_MODEL="${BASE_MODEL:-GSAI-ML/LLaDA-8B-Instruct}"
EVAL_WORKERS="${EVAL_WORKERS:-8}"
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || PRESETS=(math code countdown sudoku)
PY="${PYTHON:-.venv/bin/python}"

# preset -> "task:test file" pairs (bgpo.md section 6, row "Eval")
declare -A TESTS=(
    [math]="math:math500.parquet gsm8k:gsm8k.parquet"
    [code]="humaneval:humaneval.parquet mbpp:mbpp.parquet"
    [countdown]="countdown:countdown.parquet"
    [sudoku]="sudoku:sudoku.parquet"
)

run() {  # run a `python -m cluster.cli ...` command here, or as a Ray job on JOB_ADDRESS
    if [ -n "${JOB_ADDRESS:-}" ]; then
        ray job submit --address "$JOB_ADDRESS" --runtime-env runtime_env.yaml --working-dir . -- \
            python -m cluster.cli "$@"
    else
        "$PY" -m cluster.cli "$@"
    fi
}

train_paths() {  # dotted overrides pointing a preset at DATA_DIR (parquet never travels with a job)
    case "$1" in
        math) echo "task.train_path=[$DATA_DIR/train/math.parquet,$DATA_DIR/train/gsm8k.parquet]" \
                   "task.test_path=$DATA_DIR/test/math500.parquet" ;;
        code) echo "task.train_path=${CODE_TRAIN:?set CODE_TRAIN to the code training rows}" \
                   "task.test_path=$DATA_DIR/test/humaneval.parquet" ;;
        countdown) echo "task.train_path=$DATA_DIR/train/countdown-n20000.parquet" \
                        "task.test_path=$DATA_DIR/test/countdown.parquet" ;;
        sudoku) echo "task.train_path=$DATA_DIR/train/sudoku-n20000.parquet" \
                     "task.test_path=$DATA_DIR/test/sudoku.parquet" ;;
        *) echo "unknown preset $1" >&2; return 1 ;;
    esac
}

evaluate() {  # evaluate <model> <label> <preset>: every test set of the preset
    local model="$1" label="$2" preset="$3" pair task file
    for pair in ${TESTS[$preset]}; do
        task="${pair%%:*}"; file="${pair#*:}"
        echo "[reproduce] eval $label on $task"
        run eval --model "$model" --task "$task" --data "$DATA_DIR/test/$file" \
            --rollout-workers "$EVAL_WORKERS" --gpus-per-worker 1 --out "$OUT_DIR/eval/$label/$task"
    done
}

for preset in "${PRESETS[@]}"; do  # check every argument before anything runs
    [ -n "${TESTS[$preset]+set}" ] || { echo "unknown preset $preset (known: ${!TESTS[*]})" >&2; exit 2; }
    [ "${SKIP_TRAIN:-0}" = 1 ] || train_paths "$preset" >/dev/null || exit 2
done
mkdir -p "$OUT_DIR/eval"

for preset in "${PRESETS[@]}"; do
    [ "${SKIP_BASE:-0}" = 1 ] || evaluate "$BASE_MODEL" base "$preset"
    if [ "${SKIP_TRAIN:-0}" != 1 ]; then
        echo "[reproduce] train llada-$preset (8 GPUs: 4 rollout + 4 learner)"
        overrides="$(train_paths "$preset")"
        # shellcheck disable=SC2086  # the overrides are meant to split into words
        run train --config "llada-$preset" "output_dir=$OUT_DIR" $overrides
    fi
    if [ -f "$OUT_DIR/llada-$preset/checkpoints/latest" ]; then
        evaluate "$OUT_DIR/llada-$preset" "bgpo-$preset" "$preset"
    else
        echo "[reproduce] no checkpoint in $OUT_DIR/llada-$preset: skipping its evaluation" >&2
    fi
done

"$PY" -c "import sys; from cluster.eval_report import collect_table; print(collect_table(sys.argv[1]), end='')" \
    "$OUT_DIR/eval" | tee "$OUT_DIR/eval/table.md"
echo "[reproduce] table written to $OUT_DIR/eval/table.md; compare with docs/reproduce.md"
