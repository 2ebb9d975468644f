#!/usr/bin/env bash
# GPU check (issue #16): build the CUDA ops, run the CUDA tests, `medsyn bench ops` and `medsyn bench train`
# on CUDA at 64² and 256² (fp32 and fp16), a 2-minute training of the default dataset on CUDA, and data-parallel training
# (2 ranks with >= 2 GPUs, else 1 torchrun rank) with its s/kimg at 256² fp16 beside NVlabs' published figure.
# Prints one JSON object per step (prefixed "GPU_CHECK ") and a summary line; about 16 minutes on one GPU.
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
# Issue #30, data-parallel training: 2 ranks (`--nproc 2`, NCCL) when the machine has >= 2 GPUs, else 1 rank under
# torchrun; then the s/kimg at 256² (paper256, fp16) with that many processes, beside NVlabs' published V100 figures
# for stylegan2-ada-pytorch at 256² (21.6-24.2 s/kimg on 1 GPU, 5.6-5.9 on 4; none published for 2).
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then
  NPROC=2
  step dist_nproc2 240 medsyn train --data "$DATA" --kind joint --kimg 1000 --time-budget 60 --device cuda --no-progress \
    --nproc 2 --outdir "$OUT/train_dist" --replace
else
  NPROC=1
  step dist_torchrun1 240 "$PY" -m torch.distributed.run --standalone --nproc-per-node=1 --no-python medsyn train --data "$DATA" \
    --kind joint --kimg 1000 --time-budget 60 --device cuda --no-progress --outdir "$OUT/train_dist" --replace
fi
D256="$OUT/toy256"
"$PY" -c "from medsyn.data import toy_dataset; toy_dataset('$D256', n=64, res=256, n_modalities=4)" >/dev/null
NPROC_FLAG=()
[ "$NPROC" -ge 2 ] && NPROC_FLAG=(--nproc "$NPROC")
step dist_256_fp16 300 medsyn train --data "$D256" --kind joint --preset paper256 --precision fp16 --kimg 1000 --time-budget 150 \
  --device cuda --no-progress --set metric=stats --set metric_n=64 --set tick_kimg=0.5 "${NPROC_FLAG[@]}" --outdir "$OUT/train256" --replace
step dist_256_sec_per_kimg 30 "$PY" -c "
import json, sys, pandas as pd
s = pd.read_csv(sys.argv[1])
v = s.sec_per_kimg.iloc[1:] if len(s) > 2 else s.sec_per_kimg    # the first tick holds the start-up
print(json.dumps(dict(gpus=int(sys.argv[2]), sec_per_kimg=round(float(v.median()), 2), kimg=float(s.kimg.iloc[-1]),
                      nvlabs_v100_sec_per_kimg={'1': '21.6-24.2', '4': '5.6-5.9'})))" "$OUT/train256/stats.csv" "$NPROC"
echo "GPU_CHECK_SUMMARY {\"failed_steps\": $fail, \"outdir\": \"$OUT\"}"
exit $(( fail > 0 ))
