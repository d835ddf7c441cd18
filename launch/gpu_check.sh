#!/usr/bin/env bash
# Check a prorl install on one GPU, in about 8 minutes on an H100: the test suite with the GPU
# visible, then the GPU benchmark lines against TRL (README "Performance on a GPU"), one table.
#
#   bash launch/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ./gpu_check_out
#
# Needs: a CUDA build of torch, prorl installed (pip install -e ".[test]"), and TRL importable for
# the comparisons (pip install trl, or PRORL_BENCH_TRL_PYTHON=/path/to/python-with-trl).
# BUDGET_S (default 480) is the whole run's budget in seconds: each part gets its own time limit,
# and a part that cannot start with enough time left is skipped (listed as such in the table).
# TESTS=subset runs only the GPU-relevant test files (faster); TESTS=none skips the suite.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-480}
TESTS=${TESTS:-all}
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-$(command -v python || command -v python3)}  # PYTHON=... picks another interpreter

"$PY" - <<'EOF' || { echo "gpu_check: no CUDA GPU visible to torch (install a CUDA build of torch, see README)"; exit 2; }
import torch
assert torch.cuda.is_available()
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
EOF

: > "$OUT/parts.tsv"
# part NAME LIMIT_S MIN_S CMD...: run CMD with at most LIMIT_S seconds (less if the budget is short);
# skip it when fewer than MIN_S seconds of the budget are left.
part() {
    local name=$1 limit=$2 min=$3; shift 3
    local left=$(( BUDGET_S - ($(date +%s) - T0) ))
    if (( left < min )); then
        printf '%s\tskipped (budget: %ss left, needs %ss)\t0\n' "$name" "$left" "$min" >> "$OUT/parts.tsv"
        echo "gpu_check: $name skipped: ${left}s of the budget left"
        return
    fi
    (( limit > left )) && limit=$left
    echo "gpu_check: $name (at most ${limit}s)"
    local t=$(date +%s)
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$? status=ok
    (( rc == 124 || rc == 137 )) && status="timed out after ${limit}s"
    (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (exit $rc)"
    printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t ))" >> "$OUT/parts.tsv"
    tail -n 3 "$OUT/$name.log"
}

# pytest-xdist spreads the suite over the machine's cores when it is installed
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "$("$PY" -c 'import os; print(min(12, os.cpu_count() or 1))')")
case "$TESTS" in
    all) part tests 150 60 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" ;;
    subset) part tests 90 30 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" tests/test_rollout.py tests/test_trainer.py \
        tests/test_checkpoint.py tests/test_recipes_and_variants.py tests/test_learning.py tests/test_algos.py ;;
    none) ;;
    *) echo "gpu_check: TESTS must be all, subset or none (got $TESTS)"; exit 2 ;;
esac

# most telling first: when the budget runs short, the last parts are the ones skipped
B="$PY launch/bench.py --device cuda --threads 4 --matmul_seconds 1 --against trl"
part rl_bf16 90 45 $B --model large --bf16 --n_prompts 32 --n_samples 8 --prompt_len 128 --max_new_tokens 256 --eos \
    --steps 3 --warmup 1 --out "$OUT/rl_bf16.json"
part readme_bf16 70 40 $B --model large --bf16 --steps 3 --warmup 1 --out "$OUT/readme_bf16.json"
part qwen_bf16 200 110 $B --model qwen1.5b --bf16 --n_prompts 8 --n_samples 8 --prompt_len 256 --max_new_tokens 1024 \
    --micro_batch 4 --steps 2 --warmup 1 --out "$OUT/qwen_bf16.json"
part qwen_8k 120 50 "$PY" launch/bench.py --device cuda --threads 4 --no_matmul --model qwen1.5b --bf16 --n_prompts 2 \
    --n_samples 4 --max_new_tokens 8192 --micro_batch 1 --steps 1 --warmup 0 --out "$OUT/qwen_8k.json"
part readme_fp32 70 40 $B --model large --steps 3 --warmup 1 --out "$OUT/readme_fp32.json"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines() if line]
print(f"\n{'part':12s} {'status':24s} {'wall s':>6s} {'prorl s/step':>12s} {'gen s':>6s} {'TRL s/step':>10s} "
      f"{'tokens/s x':>10s} {'GPU MB prorl':>12s} {'GPU MB TRL':>10s}")
for name, status, wall in rows:
    line = f"{name:12s} {status[:24]:24s} {wall:>6s}"
    res = out / f"{name}.json"
    if res.exists():
        r = json.loads(res.read_text())
        p, t = r["prorl"], r.get("trl", {})
        ratio = r.get("ratio_vs_trl", {}).get("tokens_per_s")
        line += (f" {p['sec_per_step']:12.3f} {p.get('gen_sec_per_step', float('nan')):6.2f}"
                 f" {t.get('sec_per_step', float('nan')):10.3f} {ratio if ratio else float('nan'):10.2f}"
                 f" {p.get('peak_gpu_mb', float('nan')):12.0f} {t.get('peak_gpu_mb', float('nan')):10.0f}")
    elif name == "tests":
        log = (out / "tests.log").read_text().splitlines() if (out / "tests.log").exists() else []
        line += "  " + (log[-1] if log else "")
    print(line)
EOF
echo "gpu_check: $(( $(date +%s) - T0 ))s in all; logs and JSON in $OUT"
