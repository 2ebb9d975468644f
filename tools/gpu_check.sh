#!/usr/bin/env bash
# GPU check (issue #16): build the CUDA ops, run the CUDA tests, `medsyn bench ops` and `medsyn bench train`
# on CUDA at 64² and 256² (fp32 and fp16), and a 2-minute training of the default dataset on CUDA.
# Prints one JSON object per step (prefixed "GPU_CHECK ") and a summary line; under 8 minutes on one GPU.
# Usage: tools/gpu_check.sh [OUTDIR]   (run from the repository root; needs torch with CUDA and nvcc)
set -uo pipefail
OUT="${1:-${OUT:-/tmp/medsyn-gpu-check}}"
mkdir -p "$OUT"
export MEDSYN_CACHE="${MEDSYN_CACHE:-$OUT/cache}" PYTHONPATH="${PYTHONPATH:-$PWD}"
PY="${PYTHON:-python}"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False); run this on a GPU machine" >&2
  exit 2
fi
fail=0
step() {  # step NAME TIMEOUT CMD...: run, keep the log, print its last JSON line (or the error)
  local name="$1" limit="$2"; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; local rc=$?
  local json=$(grep '^{' "$OUT/$name.out" | tail -1)
  [ -z "$json" ] && json='null'
  [ $rc -ne 0 ] && fail=$((fail + 1))
  echo "GPU_CHECK {\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"result\": $json}"
  [ $rc -ne 0 ] && tail -5 "$OUT/$name.err" >&2
}
step build_ops 240 "$PY" -c "import json; from medsyn import ops; st = ops.load_plugin('cuda'); print(json.dumps(dict(error=st.error, seconds=round(st.seconds, 1)))); raise SystemExit(st.error is not None)"
step ops_check 120 medsyn ops --check --impl cuda
step ops_check_fp16 120 medsyn ops --check --impl cuda --dtype float16
step cuda_tests 120 "$PY" -m pytest -q -m cuda tests/test_ops.py tests/test_networks.py
step bench_ops 120 medsyn bench ops --device cuda
for res in 64 256; do
  step "bench_train_${res}" 120 medsyn bench train --device cuda --res "$res" --impl cuda --precision fp32,fp16 --steps 5 --warmup 2
done
DATA=$("$PY" -c "from medsyn.data import default_dataset; print(default_dataset(64))")
step train_2min 170 medsyn train --data "$DATA" --kind joint --kimg 1000 --time-budget 120 --device cuda --no-progress \
  --outdir "$OUT/train" --replace
echo "GPU_CHECK_SUMMARY {\"failed_steps\": $fail, \"outdir\": \"$OUT\"}"
exit $(( fail > 0 ))
